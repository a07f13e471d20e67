package blk

import (
	"bytes"

	"github.com/nvblk/nvblk/virtio"
)

// Disk is the block engine behind the device; btt.Device satisfies it. LBAs
// are in units of SectorSize() (512 or 4096 bytes).
type Disk interface {
	ReadV(lba uint64, iov [][]byte) error
	WriteV(lba uint64, iov [][]byte) error
	WriteZeroes(lba, n uint64) error
	Flush() error
	SectorSize() uint32
	NumSectors() uint64
	ReadOnly() bool
}

const (
	pageSize = 4096

	defaultSegMax = 126 // QEMU's default for a 128-entry queue
	// defaultMaxZeroSectors (2 GiB) bounds one discard/write-zeroes request
	// so a single request cannot monopolise a queue for too long.
	defaultMaxZeroSectors = 1 << 22
)

// Options tune what the device offers. Zero values pick defaults.
type Options struct {
	NumQueues uint16 // request queues (MQ); default 1
	ReadOnly  bool   // force read-only on top of the disk's own mode
	Serial    string // GET_ID answer; at most 20 bytes, longer is cut
	SegMax    uint32 // max data segments per request; default 126
	// SizeMax is the max bytes per segment; 0 means no limit and
	// SIZE_MAX is not offered.
	SizeMax uint32
	// MaxDiscardSectors and MaxWriteZeroesSectors are in 512-byte
	// sectors; default 2 GiB, rounded down to whole disk sectors.
	MaxDiscardSectors     uint32
	MaxWriteZeroesSectors uint32
	// WriteThrough says every completed write is already durable (the
	// medium persists each step: DAX or msync-per-step). The device then
	// has no volatile cache to report: FLUSH is not offered and the config
	// space's writeback byte is 0, so guests skip flush round trips.
	WriteThrough bool
	// QueueDisk, if set, gives each Handler its own view of the disk (a
	// BTT lane) for as long as the Handler lives, so that queues' I/O
	// shares no lock; release is called by Handler.Close. When it fails,
	// the Handler uses the shared disk.
	QueueDisk func() (d Disk, release func(), err error)
}

// Device is one virtio-blk device over a Disk. It is immutable after
// NewDevice, so its Handlers may run concurrently, one per queue.
type Device struct {
	disk       Disk
	opts       Options
	readOnly   bool
	sectorSize uint32 // disk's
	perLBA     uint64 // virtio sectors per disk LBA
	capacity   uint64 // in virtio sectors
	serial     [virtio.BlkIDBytes]byte
	features   uint64
	config     []byte
}

// NewDevice describes d as a virtio-blk device. It panics if the disk's
// sector size is not a non-zero multiple of 512: that is a programming
// error, not guest input.
func NewDevice(d Disk, opts Options) *Device {
	ss := d.SectorSize()
	if ss == 0 || ss%virtio.BlkSectorSize != 0 {
		panic("blk: disk sector size must be a non-zero multiple of 512")
	}
	dv := &Device{
		disk:       d,
		readOnly:   opts.ReadOnly || d.ReadOnly(),
		sectorSize: ss,
		perLBA:     uint64(ss / virtio.BlkSectorSize),
	}
	// Capacities beyond 2^64 bytes cannot be described; clamp rather than wrap.
	dv.capacity = d.NumSectors() * dv.perLBA
	if dv.perLBA != 0 && dv.capacity/dv.perLBA != d.NumSectors() {
		dv.capacity = ^uint64(0) / dv.perLBA * dv.perLBA
	}
	if opts.NumQueues == 0 {
		opts.NumQueues = 1
	}
	if opts.SegMax == 0 {
		opts.SegMax = defaultSegMax
	}
	opts.MaxDiscardSectors = dv.roundLimit(opts.MaxDiscardSectors)
	opts.MaxWriteZeroesSectors = dv.roundLimit(opts.MaxWriteZeroesSectors)
	copy(dv.serial[:], opts.Serial)
	dv.opts = opts

	dv.features = virtio.FVersion1 | virtio.BlkFSegMax | virtio.BlkFBlkSize |
		virtio.BlkFTopology | virtio.BlkFMQ | virtio.BlkFDiscard |
		virtio.BlkFWriteZeroes | virtio.FRingIndirectDesc | virtio.FRingEventIdx
	if !opts.WriteThrough {
		dv.features |= virtio.BlkFFlush
	}
	if opts.SizeMax != 0 {
		dv.features |= virtio.BlkFSizeMax
	}
	if dv.readOnly {
		dv.features |= virtio.BlkFRO
	}
	dv.config = dv.buildConfig()
	return dv
}

// roundLimit applies the default to a discard/write-zeroes limit and rounds
// it down to whole disk sectors (at least one), since the disk can only
// zero whole sectors.
func (dv *Device) roundLimit(v uint32) uint32 {
	if v == 0 {
		v = defaultMaxZeroSectors
	}
	p := uint32(dv.perLBA)
	return max(v/p*p, p)
}

// Features are the device feature bits to offer (ring bits included).
func (dv *Device) Features() uint64 { return dv.features }

// Config returns a copy of the virtio_blk_config bytes.
func (dv *Device) Config() []byte { return bytes.Clone(dv.config) }

// NumQueues is the number of request queues offered.
func (dv *Device) NumQueues() uint16 { return dv.opts.NumQueues }

// ReadOnly reports whether writes are refused.
func (dv *Device) ReadOnly() bool { return dv.readOnly }

// inRange reports whether n virtio sectors at sector lie inside the disk.
func (dv *Device) inRange(sector, n uint64) bool {
	return sector <= dv.capacity && n <= dv.capacity-sector
}
