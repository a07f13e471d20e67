package blk

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// fuzzChain turns fuzz input into a disk setup and a chain of any layout
// (even ones virtq.Next would refuse, like readable after writable):
// [0] bit0 4 KiB sectors, bit1 read-only, bit2 failing disk, bit3 SEG_MAX
// of 2; [1] segment count-1 (mod 8); then per segment le16: bit15
// writable, bit14 continues the previous segment's descriptor (split at a
// region boundary), low 13 bits length; the rest is the chain's bytes, in
// order.
func fuzzChain(data []byte) (sector uint32, ro, fail bool, segMax uint32, c *virtq.Chain, ok bool) {
	if len(data) < 2 {
		return 0, false, false, 0, nil, false
	}
	sector = 512
	if data[0]&1 != 0 {
		sector = 4096
	}
	ro, fail = data[0]&2 != 0, data[0]&4 != 0
	if data[0]&8 != 0 {
		segMax = 2
	}
	n := int(data[1]%8) + 1
	data = data[2:]
	if len(data) < 2*n {
		return 0, false, false, 0, nil, false
	}
	spec, body := data[:2*n], data[2*n:]
	c = &virtq.Chain{}
	for i := range n {
		v := binary.LittleEndian.Uint16(spec[2*i:])
		buf := make([]byte, int(v&0x1fff))
		body = body[copy(buf, body):]
		c.Segments = append(c.Segments, virtq.Segment{Buf: buf, Writable: v&0x8000 != 0, Continues: v&0x4000 != 0})
	}
	return sector, ro, fail, segMax, c, true
}

// fuzzSeed encodes a request in fuzzChain's format.
func fuzzSeed(flags byte, segs []virtq.Segment) []byte {
	b := []byte{flags, byte(len(segs) - 1)}
	for _, s := range segs {
		v := uint16(len(s.Buf))
		if s.Writable {
			v |= 0x8000
		}
		if s.Continues {
			v |= 0x4000
		}
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	for _, s := range segs {
		b = append(b, s.Buf...)
	}
	return b
}

func FuzzHandle(f *testing.F) {
	for _, r := range []request{
		{typ: virtio.BlkTIn, sector: 8, in: 4096},
		{typ: virtio.BlkTOut, sector: 8, out: pattern(4096, 1), cuts: []int{7, 100}},
		{typ: virtio.BlkTWriteZeroes, out: dwz(8, 8, virtio.BlkDWZFlagUnmap)},
		{typ: virtio.BlkTDiscard, out: dwz(0, 16, 0)},
		{typ: virtio.BlkTGetID, in: 20},
		{typ: virtio.BlkTFlush},
	} {
		c, _ := r.build()
		f.Add(fuzzSeed(0, c.Segments))
		f.Add(fuzzSeed(1, c.Segments))
	}
	// Data descriptors against SEG_MAX 2: three, and three pieces of which
	// two are one descriptor split at a region boundary.
	c, _ := request{typ: virtio.BlkTOut, sector: 8, out: pattern(1536, 2), cuts: []int{16 + 512, 16 + 1024}}.build()
	f.Add(fuzzSeed(8, c.Segments))
	c.Segments[2].Continues = true
	f.Add(fuzzSeed(8, c.Segments))
	f.Fuzz(func(t *testing.T, data []byte) {
		sector, ro, fail, segMax, c, ok := fuzzChain(data)
		if !ok {
			return
		}
		disk := newFakeDisk(sector, testSectors)
		disk.ro, disk.failAll = ro, fail
		h := NewDevice(disk, Options{Serial: "fuzz", SegMax: segMax}).NewHandler()
		var readable [][]byte
		var writable uint64
		for _, s := range c.Segments {
			if s.Writable {
				writable += uint64(len(s.Buf))
			} else {
				readable = append(readable, bytes.Clone(s.Buf))
			}
		}
		n := h.Handle(c).Written
		if uint64(n) > writable {
			t.Fatalf("written %d exceeds %d writable bytes", n, writable)
		}
		if disk.contract != nil {
			t.Fatalf("disk contract violated: %v", disk.contract)
		}
		i := 0
		for _, s := range c.Segments {
			if !s.Writable {
				if !bytes.Equal(s.Buf, readable[i]) {
					t.Fatalf("readable segment %d modified", i)
				}
				i++
			}
		}
		if n > 0 {
			st, ok := c.Status()
			if !ok || st[0] > virtio.BlkSUnsupp {
				t.Fatalf("written %d but status %v ok=%v", n, st, ok)
			}
		}
	})
}
