package virtq

import (
	"encoding/binary"
	"fmt"
)

// Segment is a descriptor's window into guest memory, or part of one: a
// buffer that runs from one guest memory region into the next, adjacent
// one (hot-plugged DIMMs) is not contiguous in our mappings, so it becomes
// one Segment per region it touches, as libvhost-user's iovecs do.
type Segment struct {
	Buf      []byte
	Writable bool // device-writable (VIRTQ_DESC_F_WRITE)
	// Continues is set when this segment is the rest of the previous
	// segment's descriptor, past a region boundary. Devices that count or
	// size descriptors (SEG_MAX, SIZE_MAX) count the pieces as one.
	Continues bool
}

// Chain is one popped descriptor chain. Segments is reused across Next
// calls: after it has grown to the longest chain seen, Next allocates
// nothing.
type Chain struct {
	// Head names the chain to Push: the head descriptor's index on a
	// split ring, the buffer ID on a packed one.
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

// segmentsPerEntry bounds a chain's segments: at most this many per entry
// of the table the chain lives in. A buffer split at region boundaries
// gives more segments than descriptors; this keeps a guest that makes
// every descriptor cover many small regions from growing Chain.Segments
// without bound (libvhost-user caps a chain's iovecs the same way).
const segmentsPerEntry = 2

// walk follows c.Head's chain, appending one segment per data descriptor
// and region it touches. Termination: every step visits one table entry,
// and a table of n entries may be visited at most n times before the chain
// counts as a loop; the only table switch (to an indirect table) happens at
// most once; a descriptor's buffer is walked region by region, each step
// adding a segment, and the segments are bounded.
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
			t, err := q.indirectTable(addr, length)
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
		limit := int(segmentsPerEntry * n)
		if len(c.Segments) >= limit {
			return badChain(c.Head, "more than %d segments", limit)
		}
		if length == 0 {
			c.Segments = append(c.Segments, Segment{Writable: w})
		} else if err := q.appendBuffer(c, addr, uint64(length), w, limit); err != nil {
			return badChain(c.Head, "buffer %#x+%d: %v", addr, length, err)
		}
		if flags&descFNext == 0 {
			return nil
		}
		idx = uint32(next)
	}
}

// appendBuffer appends the n bytes at gpa as segments, one per guest memory
// region they lie in (libvhost-user's virtqueue_map_desc), up to limit
// segments in the chain. On an error none of the buffer is appended, so
// the chain keeps only the descriptors parsed before the fault.
func (q *Queue) appendBuffer(c *Chain, gpa, n uint64, w bool, limit int) error {
	start := len(c.Segments)
	for cont := false; n > 0; cont = true {
		if len(c.Segments) >= limit {
			c.Segments = c.Segments[:start]
			return fmt.Errorf("split into more than the chain's %d segments", limit)
		}
		b, err := window(q.mem, gpa, n)
		if err != nil {
			c.Segments = c.Segments[:start]
			return err
		}
		k := uint64(len(b))
		c.Segments = append(c.Segments, Segment{Buf: b[:k:k], Writable: w, Continues: cont})
		gpa, n = gpa+k, n-k
	}
	return nil
}

// indirectTable maps the indirect descriptor table at gpa. Like the rings it
// is read in place when it lies in one region; one that straddles adjacent
// regions is copied into q.tableCopy (libvhost-user does the same). Either
// way walk reads each descriptor once, so a guest rewriting the table under
// us gets no different treatment from the copy.
func (q *Queue) indirectTable(gpa uint64, length uint32) ([]byte, error) {
	b, err := window(q.mem, gpa, uint64(length))
	if err != nil {
		return nil, err
	}
	if len(b) == int(length) {
		return b, nil
	}
	if cap(q.tableCopy) < int(length) {
		q.tableCopy = make([]byte, length)
	}
	t := q.tableCopy[:length]
	for off := 0; ; {
		off += copy(t[off:], b)
		if off == len(t) {
			return t, nil
		}
		if b, err = window(q.mem, gpa+uint64(off), uint64(len(t)-off)); err != nil {
			return nil, err
		}
	}
}
