package virtq

import (
	"encoding/binary"
	"fmt"
)

// Segment is one descriptor's window into guest memory.
type Segment struct {
	Buf      []byte
	Writable bool // device-writable (VIRTQ_DESC_F_WRITE)
}

// Chain is one popped descriptor chain. Segments is reused across Next
// calls: after it has grown to the longest chain seen, Next allocates
// nothing.
type Chain struct {
	Head     uint16
	Segments []Segment
}

// NewChain returns a Chain whose Segments are preallocated for typical
// chains of this queue.
func (q *Queue) NewChain() *Chain {
	return &Chain{Segments: make([]Segment, 0, min(int(q.size), 256))}
}

// Status returns the last byte of the last writable segment: where
// request/status protocols (virtio-blk, scsi) put the status byte. ok is
// false when there is no writable segment or the last one is empty.
func (c *Chain) Status() (b []byte, ok bool) {
	for i := len(c.Segments) - 1; i >= 0; i-- {
		if s := c.Segments[i]; s.Writable {
			if len(s.Buf) == 0 {
				return nil, false
			}
			return s.Buf[len(s.Buf)-1:], true
		}
	}
	return nil, false
}

// badChain builds an ErrBadChain error; only reached on hostile input, so
// the allocation is off the steady-state path.
func badChain(head uint16, format string, args ...any) error {
	return fmt.Errorf("%w (head %d): %s", ErrBadChain, head, fmt.Sprintf(format, args...))
}

// walk follows c.Head's chain, appending one segment per data descriptor.
// Termination: every step visits one table entry, and a table of n entries
// may be visited at most n times before the chain counts as a loop; the
// only table switch (to an indirect table) happens at most once.
func (q *Queue) walk(c *Chain) error {
	table := q.desc
	n := uint32(q.size) // entries in table
	idx := uint32(c.Head)
	inIndirect := false
	writable := false // a writable descriptor was seen: readable ones must precede
	visited := uint32(0)
	for {
		if visited == n {
			return badChain(c.Head, "chain longer than its table (%d entries): loop", n)
		}
		visited++
		if idx >= n {
			return badChain(c.Head, "next %d out of table of %d", idx, n)
		}
		// Copy the descriptor once: the guest may rewrite it under us.
		d := table[idx*descSize : idx*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])

		if flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return badChain(c.Head, "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")
			case inIndirect:
				return badChain(c.Head, "nested indirect descriptor")
			case visited != 1:
				return badChain(c.Head, "indirect descriptor not at chain head")
			case flags&descFNext != 0:
				return badChain(c.Head, "indirect descriptor with NEXT")
			case length == 0 || length%descSize != 0:
				return badChain(c.Head, "indirect table length %d not a non-zero multiple of %d", length, descSize)
			case length/descSize > MaxSize:
				return badChain(c.Head, "indirect table of %d entries exceeds %d", length/descSize, MaxSize)
			}
			t, err := translate(q.mem, addr, uint64(length))
			if err != nil {
				return badChain(c.Head, "indirect table at %#x+%d: %v", addr, length, err)
			}
			// The write flag of the descriptor pointing at the table is
			// ignored (virtio 1.2 §2.7.5.3.2).
			table, n, idx, visited, inIndirect = t, length/descSize, 0, 0, true
			continue
		}

		w := flags&descFWrite != 0
		if writable && !w {
			return badChain(c.Head, "readable descriptor after a writable one")
		}
		writable = writable || w
		var buf []byte
		if length > 0 {
			var err error
			if buf, err = translate(q.mem, addr, uint64(length)); err != nil {
				return badChain(c.Head, "buffer %#x+%d: %v", addr, length, err)
			}
		}
		c.Segments = append(c.Segments, Segment{Buf: buf, Writable: w})
		if flags&descFNext == 0 {
			return nil
		}
		idx = uint32(next)
	}
}
