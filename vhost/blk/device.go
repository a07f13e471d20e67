package blk

import (
	"bytes"
	"sync/atomic"

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
	// defaultSizeMax (128 KiB) makes the largest write a driver honouring
	// SEG_MAX and SIZE_MAX builds 126 × 128 KiB = 15.75 MiB at the default
	// SegMax. Linux's own default request limit (max_sectors_kb) is 1.25
	// MiB, so only a guest that raised it, or a hostile one, comes near.
	defaultSizeMax = 128 << 10
	// minSizeMax: Linux raises a max segment size below its page size to
	// the page size and builds segments that large, and arm64 and ppc64
	// kernels run with 64 KiB pages; a smaller SIZE_MAX would refuse them.
	minSizeMax = 64 << 10
	// maxRequestBytes (1 GiB) bounds the data of any request. It is the
	// largest request OVMF makes (one descriptor, without negotiating
	// SIZE_MAX: a firmware reading a kernel or initrd), and a quarter of
	// what the used element's 32-bit length can report, so that length
	// never wraps.
	maxRequestBytes = 1 << 30
	// maxSegMax is the largest SEG_MAX that keeps SegMax × minSizeMax
	// within maxRequestBytes.
	maxSegMax = maxRequestBytes / minSizeMax
	// defaultMaxZeroLBAs is how many disk sectors one DISCARD or
	// WRITE_ZEROES may cover by default: see Options.MaxDiscardSectors.
	defaultMaxZeroLBAs = 2048
)

// Options tune what the device offers. Zero values pick defaults.
//
// Every request's work is bounded by them (see the package doc): the
// limits are enforced, not only advertised, and a request beyond them is
// refused with VIRTIO_BLK_S_IOERR before anything reaches the disk.
type Options struct {
	NumQueues uint16 // request queues (MQ); default 1
	ReadOnly  bool   // force read-only on top of the disk's own mode
	Serial    string // GET_ID answer; at most 20 bytes, longer is cut
	// SegMax is the most data descriptors a request may have (SEG_MAX);
	// default 126, at most 16384.
	SegMax uint32
	// SizeMax is the most data bytes one descriptor may have (SIZE_MAX,
	// always offered); default 128 KiB. It is rounded down to 4 KiB,
	// raised to 64 KiB and lowered so that SegMax × SizeMax is at most 1
	// GiB. SegMax × SizeMax is also the most data a write may carry,
	// whether or not the driver negotiated SIZE_MAX: the largest write a
	// driver honouring both limits builds, and what bounds the time one
	// write holds its queue (a medium that persists every sector takes
	// that many sector persists).
	SizeMax uint32
	// MaxDiscardSectors and MaxWriteZeroesSectors, in 512-byte sectors,
	// bound one DISCARD or WRITE_ZEROES request, rounded down to whole
	// disk sectors (at least one). Zeroing costs per disk sector, not per
	// byte: one BTT map update each, which a medium that persists every
	// step (--durability sync: an msync each, 0.5 to 0.85 ms) makes slow,
	// so that the 2 GiB once offered held a queue for minutes. The default
	// is therefore 2048 disk sectors (8 MiB of 4 KiB sectors, 1 MiB of 512
	// byte ones): under two seconds there, milliseconds on the other
	// media. Linux splits larger discards itself.
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
// NewDevice but for its capacity and config space, which Resize replaces
// atomically, so its Handlers may run concurrently, one per queue.
type Device struct {
	disk       Disk
	opts       Options
	readOnly   bool
	sectorSize uint32        // disk's
	perLBA     uint64        // virtio sectors per disk LBA
	capacity   atomic.Uint64 // in virtio sectors; Resize stores, requests load

	maxWrite uint64 // data bytes a write may carry: SegMax × SizeMax
	serial   [virtio.BlkIDBytes]byte
	features uint64
	config   atomic.Pointer[[]byte] // GET_CONFIG's bytes; replaced whole by Resize
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
	dv.capacity.Store(dv.capacityOf(d.NumSectors()))
	if opts.NumQueues == 0 {
		opts.NumQueues = 1
	}
	opts.SegMax, opts.SizeMax = segmentLimits(opts.SegMax, opts.SizeMax)
	dv.maxWrite = uint64(opts.SegMax) * uint64(opts.SizeMax)
	opts.MaxDiscardSectors = dv.roundLimit(opts.MaxDiscardSectors)
	opts.MaxWriteZeroesSectors = dv.roundLimit(opts.MaxWriteZeroesSectors)
	copy(dv.serial[:], opts.Serial)
	dv.opts = opts

	// SIZE_MAX is always offered: it is what keeps a Linux guest's
	// requests within SegMax × SizeMax (Linux sets no other request size
	// limit from the config space).
	dv.features = virtio.FVersion1 | virtio.BlkFSegMax | virtio.BlkFSizeMax |
		virtio.BlkFBlkSize | virtio.BlkFTopology | virtio.BlkFMQ |
		virtio.BlkFDiscard | virtio.BlkFWriteZeroes | virtio.FRingIndirectDesc |
		virtio.FRingEventIdx
	if !opts.WriteThrough {
		dv.features |= virtio.BlkFFlush
	}
	if dv.readOnly {
		dv.features |= virtio.BlkFRO
	}
	cfg := dv.buildConfig()
	dv.config.Store(&cfg)
	return dv
}

// capacityOf is n disk sectors in virtio sectors. Capacities beyond 2^64
// bytes cannot be described: clamped rather than wrapped.
func (dv *Device) capacityOf(n uint64) uint64 {
	c := n * dv.perLBA
	if dv.perLBA != 0 && c/dv.perLBA != n {
		c = ^uint64(0) / dv.perLBA * dv.perLBA
	}
	return c
}

// Resize takes the disk's capacity again (it grew: btt.Device.Grow) and
// reports whether it changed. Requests see the new capacity at once; the
// front-end learns of it through a config change (vhost.Server.
// NotifyConfigChange), after which GET_CONFIG answers it.
func (dv *Device) Resize() bool {
	c := dv.capacityOf(dv.disk.NumSectors())
	if c == dv.capacity.Load() {
		return false
	}
	dv.capacity.Store(c)
	cfg := dv.buildConfig()
	dv.config.Store(&cfg)
	return true
}

// segmentLimits applies the defaults and bounds of SegMax and SizeMax.
func segmentLimits(segMax, sizeMax uint32) (uint32, uint32) {
	if segMax == 0 {
		segMax = defaultSegMax
	}
	segMax = min(segMax, maxSegMax)
	if sizeMax == 0 {
		sizeMax = defaultSizeMax
	}
	sizeMax = min(max(sizeMax&^(pageSize-1), minSizeMax), maxRequestBytes/segMax&^(pageSize-1))
	return segMax, sizeMax
}

// roundLimit applies the default to a discard/write-zeroes limit and rounds
// it down to whole disk sectors (at least one), since the disk can only
// zero whole sectors.
func (dv *Device) roundLimit(v uint32) uint32 {
	p := uint32(dv.perLBA)
	if v == 0 {
		v = defaultMaxZeroLBAs * p
	}
	return max(v/p*p, p)
}

// Features are the device feature bits to offer (ring bits included).
func (dv *Device) Features() uint64 { return dv.features }

// Config returns a copy of the virtio_blk_config bytes.
func (dv *Device) Config() []byte { return bytes.Clone(*dv.config.Load()) }

// NumQueues is the number of request queues offered.
func (dv *Device) NumQueues() uint16 { return dv.opts.NumQueues }

// ReadOnly reports whether writes are refused.
func (dv *Device) ReadOnly() bool { return dv.readOnly }

// inRange reports whether n virtio sectors at sector lie inside the disk.
func (dv *Device) inRange(sector, n uint64) bool {
	capacity := dv.capacity.Load()
	return sector <= capacity && n <= capacity-sector
}
