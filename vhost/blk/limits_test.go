package blk

import (
	"encoding/binary"
	"testing"

	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// nullDisk is a large disk that moves no bytes: requests the size of the
// limits (gigabytes) cost the test nothing. It counts what reaches it.
type nullDisk struct{ ios int }

func (d *nullDisk) ReadV(uint64, [][]byte) error  { d.ios++; return nil }
func (d *nullDisk) WriteV(uint64, [][]byte) error { d.ios++; return nil }
func (d *nullDisk) WriteZeroes(uint64, uint64) error {
	d.ios++
	return nil
}
func (d *nullDisk) Flush() error       { return nil }
func (d *nullDisk) SectorSize() uint32 { return 512 }
func (d *nullDisk) NumSectors() uint64 { return 1 << 24 } // 8 GiB
func (d *nullDisk) ReadOnly() bool     { return false }

// piece is one data segment of a limits test request: its own descriptor,
// or with cont the rest of the previous one past a guest memory region
// boundary (virtq.Segment.Continues).
type piece struct {
	n    int
	cont bool
}

// pieces is n pieces of size bytes, each its own descriptor.
func pieces(n, size int) []piece {
	ps := make([]piece, n)
	for i := range ps {
		ps[i].n = size
	}
	return ps
}

// aliased is the one buffer every large data segment of the limits tests
// aliases, as a guest may point all its descriptors at the same memory.
var aliased = make([]byte, 1<<20)

// limitReq builds a request of typ whose data is ps: a 16-byte header
// descriptor, the data (device-writable for IN and GET_ID), and a status
// descriptor. Data pieces above 4 KiB alias one buffer. It returns the
// chain and its status byte.
func limitReq(typ uint32, ps []piece) (*virtq.Chain, []byte) {
	hdr := make([]byte, virtio.BlkReqHeaderSize)
	binary.LittleEndian.PutUint32(hdr[0:], typ)
	in := typ == virtio.BlkTIn || typ == virtio.BlkTGetID
	c := &virtq.Chain{Segments: []virtq.Segment{{Buf: hdr}}}
	for _, p := range ps {
		b := make([]byte, min(p.n, 4096))
		if typ == virtio.BlkTDiscard {
			b = dwz(0, 8, 0)[:p.n]
		}
		if p.n > 4096 {
			b = aliased[:p.n:p.n]
		}
		c.Segments = append(c.Segments, virtq.Segment{Buf: b, Writable: in, Continues: p.cont})
	}
	status := []byte{0xff}
	c.Segments = append(c.Segments, virtq.Segment{Buf: status, Writable: true})
	return c, status
}

// TestHandleLimits: a request is held to what the device advertises, SEG_MAX
// data descriptors of at most SIZE_MAX bytes (once the driver negotiated
// it), and to a byte bound: SEG_MAX × SIZE_MAX for a write, 1 GiB for a
// read. Beyond them it is refused with IOERR and nothing reaches the disk;
// the used length reports what was written, never a value wrapped at 4 GiB.
func TestHandleLimits(t *testing.T) {
	const MiB = 1 << 20
	tests := []struct {
		name     string
		opts     Options
		sizeMax  bool // the driver negotiated VIRTIO_BLK_F_SIZE_MAX
		typ      uint32
		data     []piece
		status   byte
		written  uint32
		reaching int // requests reaching the disk
	}{
		{name: "read of seg_max data descriptors", opts: Options{SegMax: 4}, typ: virtio.BlkTIn,
			data: pieces(4, 512), status: virtio.BlkSOK, written: 4*512 + 1, reaching: 1},
		{name: "read of one data descriptor over seg_max", opts: Options{SegMax: 4}, typ: virtio.BlkTIn,
			data: pieces(5, 512), status: virtio.BlkSIOErr, written: 1},
		{name: "write of one data descriptor over seg_max", opts: Options{SegMax: 4}, typ: virtio.BlkTOut,
			data: pieces(5, 512), status: virtio.BlkSIOErr, written: 1},
		{name: "get id over seg_max", opts: Options{SegMax: 1}, typ: virtio.BlkTGetID,
			data: pieces(2, 10), status: virtio.BlkSIOErr, written: 1},
		{name: "discard segment over seg_max descriptors", opts: Options{SegMax: 1}, typ: virtio.BlkTDiscard,
			data: []piece{{n: 8}, {n: 8}}, status: virtio.BlkSIOErr, written: 1},
		{name: "descriptor split at a region boundary counts once", opts: Options{SegMax: 1}, typ: virtio.BlkTIn,
			data: []piece{{n: 100}, {n: 312, cont: true}, {n: 100, cont: true}}, status: virtio.BlkSOK, written: 513, reaching: 1},
		{name: "read descriptor at size_max", opts: Options{SizeMax: 64 << 10}, sizeMax: true, typ: virtio.BlkTIn,
			data: pieces(1, 64<<10), status: virtio.BlkSOK, written: 64<<10 + 1, reaching: 1},
		{name: "read descriptor over size_max", opts: Options{SizeMax: 64 << 10}, sizeMax: true, typ: virtio.BlkTIn,
			data: pieces(1, 64<<10+512), status: virtio.BlkSIOErr, written: 1},
		{name: "write descriptor over size_max", opts: Options{SizeMax: 64 << 10}, sizeMax: true, typ: virtio.BlkTOut,
			data: pieces(1, 64<<10+512), status: virtio.BlkSIOErr, written: 1},
		{name: "descriptor split at a region boundary sized as one", opts: Options{SizeMax: 64 << 10}, sizeMax: true, typ: virtio.BlkTIn,
			data: []piece{{n: 32 << 10}, {n: 32<<10 + 512, cont: true}}, status: virtio.BlkSIOErr, written: 1},
		// OVMF negotiates neither SIZE_MAX nor SEG_MAX and reads a file
		// through one descriptor as large as it is.
		{name: "read descriptor over size_max not negotiated", opts: Options{SizeMax: 64 << 10}, typ: virtio.BlkTIn,
			data: pieces(1, MiB), status: virtio.BlkSOK, written: MiB + 1, reaching: 1},
		{name: "write at seg_max × size_max not negotiated", opts: Options{SegMax: 2, SizeMax: 64 << 10}, typ: virtio.BlkTOut,
			data: pieces(1, 128<<10), status: virtio.BlkSOK, written: 1, reaching: 1},
		{name: "write over seg_max × size_max not negotiated", opts: Options{SegMax: 2, SizeMax: 64 << 10}, typ: virtio.BlkTOut,
			data: pieces(1, 128<<10+512), status: virtio.BlkSIOErr, written: 1},
		{name: "read of 1 GiB", opts: Options{SegMax: 1024}, typ: virtio.BlkTIn,
			data: pieces(1024, MiB), status: virtio.BlkSOK, written: 1<<30 + 1, reaching: 1},
		{name: "read over 1 GiB", opts: Options{SegMax: 1025}, typ: virtio.BlkTIn,
			data: pieces(1025, MiB), status: virtio.BlkSIOErr, written: 1},
		// The used length is 32 bits: 4 GiB + 1 MiB of descriptors aliasing
		// the same guest memory used to complete as 1 MiB + 1.
		{name: "read over 4 GiB of aliasing descriptors", opts: Options{SegMax: 8192}, typ: virtio.BlkTIn,
			data: pieces(4097, MiB), status: virtio.BlkSIOErr, written: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disk := &nullDisk{}
			h := NewDevice(disk, tt.opts).NewHandler()
			if tt.sizeMax {
				h.SetDriverFeatures(virtio.BlkFSizeMax)
			}
			c, status := limitReq(tt.typ, tt.data)
			o := h.Handle(c)
			if status[0] != tt.status || o.Written != tt.written {
				t.Errorf("status %d written %d, want %d and %d", status[0], o.Written, tt.status, tt.written)
			}
			if disk.ios != tt.reaching {
				t.Errorf("%d requests reached the disk, want %d", disk.ios, tt.reaching)
			}
		})
	}
}

// TestHandleLimitsHeaderAndDataSplitAtRegionBoundary: a descriptor holding
// the header and then data, split by virtq where a region ends, is one
// data descriptor whether its first piece holds data or only the header.
func TestHandleLimitsHeaderAndDataSplitAtRegionBoundary(t *testing.T) {
	for _, at := range []int{10, 16, 100} {
		hdr := make([]byte, virtio.BlkReqHeaderSize+512)
		binary.LittleEndian.PutUint32(hdr[0:], virtio.BlkTOut)
		c := &virtq.Chain{Segments: []virtq.Segment{
			{Buf: hdr[:at]}, {Buf: hdr[at:], Continues: true}, {Buf: []byte{0xff}, Writable: true},
		}}
		disk := &nullDisk{}
		h := NewDevice(disk, Options{SegMax: 1}).NewHandler()
		if o := h.Handle(c); o.Written != 1 || c.Segments[2].Buf[0] != virtio.BlkSOK || disk.ios != 1 {
			t.Errorf("split after %d bytes: written %d status %d, %d disk requests", at, o.Written, c.Segments[2].Buf[0], disk.ios)
		}
	}
}

// TestSetDriverFeaturesWithoutSizeMax: a driver that renegotiates without
// SIZE_MAX is no longer held to it.
func TestSetDriverFeaturesWithoutSizeMax(t *testing.T) {
	h := NewDevice(&nullDisk{}, Options{SizeMax: 64 << 10}).NewHandler()
	h.SetDriverFeatures(virtio.BlkFSizeMax)
	h.SetDriverFeatures(virtio.FVersion1)
	c, status := limitReq(virtio.BlkTIn, pieces(1, 1<<20))
	if h.Handle(c); status[0] != virtio.BlkSOK {
		t.Fatalf("status %d, want OK", status[0])
	}
}
