package blk

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/nvblk/nvblk/virtio"
)

// TestConfigGolden pins the size and every offset of virtio_blk_config
// against hand-written bytes (virtio 1.2 §5.2.4), for a 1 GiB disk of 4 KiB
// sectors.
func TestConfigGolden(t *testing.T) {
	disk := newFakeDisk(4096, 0)
	disk.data = nil
	dv := NewDevice(&sizedDisk{fakeDisk: disk, sectors: 1 << 18}, Options{NumQueues: 4, SegMax: 254, SizeMax: 1 << 20})
	want := []byte{
		0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, // 0  capacity = 2097152 sectors of 512
		0x00, 0x00, 0x10, 0x00, // 8  size_max = 1 MiB
		0xfe, 0x00, 0x00, 0x00, // 12 seg_max = 254
		0x20, 0x08, // 16 cylinders = 2097152/(16*63) = 2080
		0x10,                   // 18 heads
		0x3f,                   // 19 sectors
		0x00, 0x10, 0x00, 0x00, // 20 blk_size = 4096
		0x00,       // 24 physical_block_exp
		0x00,       // 25 alignment_offset
		0x01, 0x00, // 26 min_io_size
		0x01, 0x00, 0x00, 0x00, // 28 opt_io_size = 1 block of 4096
		0x01,       // 32 writeback
		0x00,       // 33 unused0
		0x04, 0x00, // 34 num_queues
		0x00, 0x40, 0x00, 0x00, // 36 max_discard_sectors = 16384 (2048 blocks)
		0x01, 0x00, 0x00, 0x00, // 40 max_discard_seg
		0x08, 0x00, 0x00, 0x00, // 44 discard_sector_alignment = 8
		0x00, 0x40, 0x00, 0x00, // 48 max_write_zeroes_sectors
		0x01, 0x00, 0x00, 0x00, // 52 max_write_zeroes_seg
		0x01,             // 56 write_zeroes_may_unmap
		0x00, 0x00, 0x00, // 57 unused1
		0, 0, 0, 0, // 60 max_secure_erase_sectors
		0, 0, 0, 0, // 64 max_secure_erase_seg
		0, 0, 0, 0, // 68 secure_erase_sector_alignment
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 72 zoned
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 84
	}
	got := dv.Config()
	if len(got) != 96 || len(want) != 96 {
		t.Fatalf("config is %d bytes (golden %d), want 96", len(got), len(want))
	}
	if !bytes.Equal(got, want) {
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("offset %d: got %#02x, want %#02x", i, got[i], want[i])
			}
		}
	}
	got[0] = 0xff
	if dv.Config()[0] == 0xff {
		t.Fatal("Config returned the device's own buffer")
	}
}

// sizedDisk reports a capacity without backing it; only config is read.
type sizedDisk struct {
	*fakeDisk
	sectors uint64
}

func (d *sizedDisk) NumSectors() uint64 { return d.sectors }

func TestConfigDefaults512(t *testing.T) {
	dv := NewDevice(newFakeDisk(512, testSectors), Options{MaxDiscardSectors: 1001})
	cfg := dv.Config()
	le32 := func(off int) uint32 { return binary.LittleEndian.Uint32(cfg[off:]) }
	checks := []struct {
		name string
		off  int
		want uint32
	}{
		{"capacity", virtio.BlkCfgCapacity, testSectors},
		{"seg_max default", virtio.BlkCfgSegMax, defaultSegMax},
		{"size_max default", virtio.BlkCfgSizeMax, defaultSizeMax},
		{"blk_size", virtio.BlkCfgBlkSize, 512},
		{"opt_io_size is a page", virtio.BlkCfgOptIOSize, 8},
		{"max_discard_sectors as given", virtio.BlkCfgMaxDiscardSectors, 1001},
		{"discard_sector_alignment", virtio.BlkCfgDiscardSectorAlign, 1},
		{"max_write_zeroes_sectors default", virtio.BlkCfgMaxWriteZeroesSecs, defaultMaxZeroLBAs},
	}
	for _, c := range checks {
		if got := le32(c.off); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	if got := binary.LittleEndian.Uint16(cfg[virtio.BlkCfgNumQueues:]); got != 1 {
		t.Errorf("num_queues default %d, want 1", got)
	}
}

// TestZeroingLimitsDefaultToDiskSectors: a DISCARD or WRITE_ZEROES costs
// per disk sector, so the default bounds the disk sectors one may cover
// (2048, a couple of seconds where each map update is persisted on its
// own), not its bytes: 2 GiB of them held a queue for minutes.
func TestZeroingLimitsDefaultToDiskSectors(t *testing.T) {
	for _, ss := range []uint32{512, 4096} {
		cfg := NewDevice(newFakeDisk(ss, testSectors), Options{}).Config()
		for _, off := range []int{virtio.BlkCfgMaxDiscardSectors, virtio.BlkCfgMaxWriteZeroesSecs} {
			if got, want := binary.LittleEndian.Uint32(cfg[off:]), 2048*ss/512; got != want {
				t.Errorf("%d-byte sectors: limit at config offset %d is %d virtio sectors, want %d (2048 disk sectors)", ss, off, got, want)
			}
		}
	}
}

func TestConfigLimitsRoundedToDiskSectors(t *testing.T) {
	dv := NewDevice(newFakeDisk(4096, testSectors), Options{MaxDiscardSectors: 1001, MaxWriteZeroesSectors: 3})
	cfg := dv.Config()
	if got := binary.LittleEndian.Uint32(cfg[virtio.BlkCfgMaxDiscardSectors:]); got != 1000 {
		t.Errorf("max_discard_sectors %d, want 1001 rounded down to 1000", got)
	}
	if got := binary.LittleEndian.Uint32(cfg[virtio.BlkCfgMaxWriteZeroesSecs:]); got != 8 {
		t.Errorf("max_write_zeroes_sectors %d, want at least one disk sector (8)", got)
	}
}

func TestFeatures(t *testing.T) {
	always := virtio.FVersion1 | virtio.BlkFSegMax | virtio.BlkFSizeMax | virtio.BlkFBlkSize | virtio.BlkFFlush | virtio.BlkFTopology |
		virtio.BlkFMQ | virtio.BlkFDiscard | virtio.BlkFWriteZeroes | virtio.FRingIndirectDesc | virtio.FRingEventIdx
	tests := []struct {
		name      string
		diskRO    bool
		opts      Options
		want, not uint64
	}{
		{"read-write", false, Options{}, always, virtio.BlkFRO | virtio.BlkFGeometry | virtio.BlkFConfigWCE},
		{"disk read-only", true, Options{}, always | virtio.BlkFRO, 0},
		{"forced read-only", false, Options{ReadOnly: true}, always | virtio.BlkFRO, 0},
		{"size max given", false, Options{SizeMax: 65536}, always, virtio.BlkFRO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newFakeDisk(512, testSectors)
			d.ro = tt.diskRO
			dv := NewDevice(d, tt.opts)
			f := dv.Features()
			if f&tt.want != tt.want || f&tt.not != 0 {
				t.Fatalf("features %#x, want %#x set and %#x clear", f, tt.want, tt.not)
			}
			if dv.ReadOnly() != (f&virtio.BlkFRO != 0) {
				t.Fatal("ReadOnly disagrees with virtio.BlkFRO")
			}
		})
	}
}

func TestNewDeviceBadSectorSize(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("NewDevice accepted a 100-byte sector")
		}
	}()
	NewDevice(newFakeDisk(100, 1), Options{})
}

// TestSegmentLimits: SEG_MAX and SIZE_MAX as offered, from what was asked.
// Their product, the largest request a driver honouring both builds, stays
// within a gigabyte, and SIZE_MAX never drops below a 64 KiB guest page.
func TestSegmentLimits(t *testing.T) {
	tests := []struct {
		name                    string
		segMax, sizeMax         uint32
		wantSegMax, wantSizeMax uint32
	}{
		{"defaults", 0, 0, 126, 128 << 10},
		{"as asked", 254, 1 << 20, 254, 1 << 20},
		{"size rounded down to 4 KiB", 8, 70000, 8, 17 << 12},
		{"size below a 64 KiB page raised", 8, 4096, 8, 64 << 10},
		{"size lowered to keep a request within 1 GiB", 1024, 4 << 20, 1024, 1 << 20},
		{"seg max capped", 1 << 20, 0, 16384, 64 << 10},
		{"largest of both", 0xffffffff, 0xffffffff, 16384, 64 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := NewDevice(newFakeDisk(512, testSectors), Options{SegMax: tt.segMax, SizeMax: tt.sizeMax}).Config()
			segMax := binary.LittleEndian.Uint32(cfg[virtio.BlkCfgSegMax:])
			sizeMax := binary.LittleEndian.Uint32(cfg[virtio.BlkCfgSizeMax:])
			if segMax != tt.wantSegMax || sizeMax != tt.wantSizeMax {
				t.Fatalf("seg_max %d size_max %d, want %d %d", segMax, sizeMax, tt.wantSegMax, tt.wantSizeMax)
			}
			if uint64(segMax)*uint64(sizeMax) > maxRequestBytes {
				t.Fatalf("seg_max × size_max = %d over %d", uint64(segMax)*uint64(sizeMax), maxRequestBytes)
			}
		})
	}
}
