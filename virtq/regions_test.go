package virtq

import (
	"bytes"
	"errors"
	"testing"
)

// TestBufferAcrossAdjacentRegions: a buffer that runs from one guest memory
// region into the next, adjacent one is served as one segment per region,
// the later ones marked Continues, and holds the guest's bytes in order.
func TestBufferAcrossAdjacentRegions(t *testing.T) {
	tests := []struct {
		name     string
		gpa      uint64
		len      uint32
		writable bool
		pieces   []int // segment lengths, in order
	}{
		{"readable across one boundary", adjBase + adjLen - 100, 300, false, []int{100, 200}},
		{"writable across one boundary", adjBase + adjLen - 1, 2, true, []int{1, 1}},
		{"across two boundaries", adjBase + adjLen - 10, adjLen + 20, false, []int{10, adjLen, 10}},
		{"every byte of the adjacent regions", adjBase, adjRegions * adjLen, true, []int{adjLen, adjLen, adjLen}},
		{"ending at a boundary", adjBase + adjLen - 64, 64, false, []int{64}},
		{"starting at a boundary", adjBase + adjLen, 64, false, []int{64}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t, 8)
			q := d.queue(false, false)
			want := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, int(tt.len)/7+1)[:tt.len]
			d.mem.fill(t, tt.gpa, want)
			var flags uint16
			if tt.writable {
				flags = descFWrite
			}
			hdr := d.alloc(16, 0xaa)
			d.avail(d.chain(0, desc{addr: hdr, len: 16}, desc{addr: tt.gpa, len: tt.len, flags: flags}))
			c := q.NewChain()
			if ok, err := q.Next(c); !ok || err != nil {
				t.Fatalf("Next: ok=%v err=%v", ok, err)
			}
			segs := c.Segments[1:]
			if len(segs) != len(tt.pieces) {
				t.Fatalf("%d segments for the buffer, want %d", len(segs), len(tt.pieces))
			}
			var got []byte
			for i, s := range segs {
				if len(s.Buf) != tt.pieces[i] || s.Writable != tt.writable || s.Continues != (i > 0) {
					t.Errorf("segment %d: len %d writable %v continues %v, want %d %v %v",
						i, len(s.Buf), s.Writable, s.Continues, tt.pieces[i], tt.writable, i > 0)
				}
				got = append(got, s.Buf...)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("segments do not hold the buffer's bytes in order")
			}
			if c.Segments[0].Continues {
				t.Fatal("the header descriptor's segment marked Continues")
			}
		})
	}
}

// TestIndirectTableAcrossAdjacentRegions: an indirect table that straddles
// two adjacent regions is read as one table.
func TestIndirectTableAcrossAdjacentRegions(t *testing.T) {
	d := newDriver(t, 4)
	q := d.queue(false, true)
	a, b := d.alloc(528, 7), d.alloc(1, 8)
	table := uint64(adjBase + adjLen - descSize) // entry 0 in one region, entry 1 in the next
	d.writeDescs(table, 0, desc{addr: a, len: 528, flags: descFNext, next: 1})
	d.writeDescs(table+descSize, 0, desc{addr: b, len: 1, flags: descFWrite})
	d.avail(d.chain(0, desc{addr: table, len: 2 * descSize, flags: descFIndirect}))
	c := q.NewChain()
	if ok, err := q.Next(c); !ok || err != nil {
		t.Fatalf("Next: ok=%v err=%v", ok, err)
	}
	if len(c.Segments) != 2 || len(c.Segments[0].Buf) != 528 || c.Segments[0].Buf[0] != 7 ||
		!c.Segments[1].Writable || c.Segments[1].Buf[0] != 8 {
		t.Fatalf("unexpected segments %+v", c.Segments)
	}
}

// TestAdjacentRegionsStillBounded: splitting at region boundaries is no way
// past the checks: a buffer running on into unmapped space, and a chain
// split into more segments than it may have, are malformed chains.
func TestAdjacentRegionsStillBounded(t *testing.T) {
	tests := []struct {
		name     string
		size     uint16
		indirect bool
		build    func(d *driver) uint16
	}{
		{"buffer from adjacent regions into a hole", 8, false, func(d *driver) uint16 {
			return d.chain(0, desc{addr: adjEnd - adjLen - 10, len: adjLen + 20})
		}},
		{"indirect table from adjacent regions into a hole", 8, true, func(d *driver) uint16 {
			return d.chain(0, desc{addr: adjEnd - descSize, len: 2 * descSize, flags: descFIndirect})
		}},
		// A queue of one entry may hold a chain of two segments: one
		// descriptor over three regions is one too many.
		{"more than two segments per table entry", 1, false, func(d *driver) uint16 {
			return d.chain(0, desc{addr: adjBase + adjLen - 1, len: adjLen + 2})
		}},
		{"more than two segments per indirect table entry", 8, true, func(d *driver) uint16 {
			t := d.alloc(descSize, 0)
			d.writeDescs(t, 0, desc{addr: adjBase + adjLen - 1, len: adjLen + 2})
			return d.chain(0, desc{addr: t, len: descSize, flags: descFIndirect})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t, tt.size)
			q := d.queue(false, tt.indirect)
			head := tt.build(d)
			d.avail(head)
			c := q.NewChain()
			ok, err := q.Next(c)
			if !ok || !errors.Is(err, ErrBadChain) || c.Head != head {
				t.Fatalf("Next: ok=%v err=%v head %d, want ok, ErrBadChain, head %d", ok, err, c.Head, head)
			}
		})
	}
	// The same descriptor in a queue with room for its segments is fine.
	d := newDriver(t, 2)
	q := d.queue(false, false)
	d.avail(d.chain(0, desc{addr: adjBase + adjLen - 1, len: adjLen + 2}))
	if ok, err := q.Next(q.NewChain()); !ok || err != nil {
		t.Fatalf("three segments in a queue of two entries: ok=%v err=%v", ok, err)
	}
}
