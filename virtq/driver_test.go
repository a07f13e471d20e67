package virtq

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
)

// guestMem is a test Memory: several guest-physical regions, each backed by
// its own byte slice (large make([]byte) allocations are page-aligned, like
// mmap), so adjacent regions are not contiguous in host memory.
type guestMem struct{ regions []memRegion }

type memRegion struct {
	gpa uint64
	buf []byte
}

var errUnmapped = errors.New("gpa not mapped")

// Translate returns the bytes at gpa up to the end of its region, as the
// vhost memory table does.
func (m *guestMem) Translate(gpa, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if gpa >= r.gpa && gpa-r.gpa < uint64(len(r.buf)) {
			off := gpa - r.gpa
			k := min(n, uint64(len(r.buf))-off)
			return r.buf[off : off+k : off+k], nil
		}
	}
	return nil, errUnmapped
}

// slice returns the host bytes of [gpa, gpa+n), which must lie in one
// region, or fails the test.
func (m *guestMem) slice(t testing.TB, gpa, n uint64) []byte {
	t.Helper()
	b, err := m.Translate(gpa, n)
	if err != nil || uint64(len(b)) != n {
		t.Fatalf("test memory %#x+%d: %d bytes, %v", gpa, n, len(b), err)
	}
	return b
}

// Test guest-physical layout: rings in one region, buffers in another, a
// small third region right after a hole, to test region edges, and three
// small regions back to back (adjacent in guest-physical space, separate
// in host memory, as hot-plugged DIMMs are), then a hole.
const (
	ringBase = 0x10000
	ringLen  = 0x10000
	bufBase  = 0x100000
	bufLen   = 0x40000
	edgeBase = 0x200000 // 4 KiB region; bufBase+bufLen..edgeBase is a hole
	edgeLen  = 0x1000
	adjBase  = 0x300000 // adjRegions regions of adjLen, back to back
	adjLen   = 0x1000
	adjEnd   = adjBase + adjRegions*adjLen

	adjRegions = 3

	descGPA  = ringBase
	availGPA = ringBase + 0x8000
	usedGPA  = ringBase + 0xa000
)

func newGuestMem() *guestMem {
	m := &guestMem{regions: []memRegion{
		{ringBase, make([]byte, ringLen)},
		{bufBase, make([]byte, bufLen)},
		{edgeBase, make([]byte, edgeLen)},
	}}
	for i := range uint64(adjRegions) {
		m.regions = append(m.regions, memRegion{adjBase + i*adjLen, make([]byte, adjLen)})
	}
	return m
}

// fill writes b at gpa, across region boundaries.
func (m *guestMem) fill(t testing.TB, gpa uint64, b []byte) {
	t.Helper()
	for len(b) > 0 {
		w, err := m.Translate(gpa, uint64(len(b)))
		if err != nil {
			t.Fatalf("test memory %#x+%d: %v", gpa, len(b), err)
		}
		n := copy(w, b)
		gpa, b = gpa+uint64(n), b[n:]
	}
}

// desc is one descriptor as the test driver writes it.
type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

// driver is the test-only driver side of a split queue.
type driver struct {
	t        testing.TB
	mem      *guestMem
	size     uint16
	availIdx uint16
	heap     uint64 // bump allocator in the buffer region
}

func newDriver(t testing.TB, size uint16) *driver {
	return &driver{t: t, mem: newGuestMem(), size: size, heap: bufBase}
}

func (d *driver) config(eventIdx, indirect bool) Config {
	return Config{Size: d.size, DescAddr: descGPA, AvailAddr: availGPA, UsedAddr: usedGPA, EventIdx: eventIdx, IndirectDesc: indirect}
}

func (d *driver) queue(eventIdx, indirect bool) *Queue {
	d.t.Helper()
	q, err := New(d.mem, d.config(eventIdx, indirect))
	if err != nil {
		d.t.Fatal(err)
	}
	return q
}

// alloc returns the gpa of n fresh bytes in the buffer region filled with fill.
func (d *driver) alloc(n uint64, fill byte) uint64 {
	gpa := (d.heap + 15) &^ 15
	d.heap = gpa + n
	b := d.mem.slice(d.t, gpa, n)
	for i := range b {
		b[i] = fill
	}
	return gpa
}

// writeDescs writes descs into the table at gpa starting at index first.
func (d *driver) writeDescs(table uint64, first int, descs ...desc) {
	b := d.mem.slice(d.t, table+uint64(first)*descSize, uint64(len(descs))*descSize)
	for i, ds := range descs {
		e := b[i*descSize:]
		binary.LittleEndian.PutUint64(e[0:], ds.addr)
		binary.LittleEndian.PutUint32(e[8:], ds.len)
		binary.LittleEndian.PutUint16(e[12:], ds.flags)
		binary.LittleEndian.PutUint16(e[14:], ds.next)
	}
}

// chain writes descs at table indices first.. linked with NEXT (the flags
// given are kept; NEXT/next are set for all but the last) and returns first.
func (d *driver) chain(first uint16, descs ...desc) uint16 {
	for i := range descs {
		if i < len(descs)-1 {
			descs[i].flags |= descFNext
			descs[i].next = first + uint16(i) + 1
		}
	}
	d.writeDescs(descGPA, int(first), descs...)
	return first
}

// avail makes heads available: ring entries first, then the index with
// release ordering (the atomic store), like a real driver's barrier.
func (d *driver) avail(heads ...uint16) {
	ring := d.mem.slice(d.t, availGPA+4, 2*uint64(d.size))
	for _, h := range heads {
		binary.LittleEndian.PutUint16(ring[2*int(d.availIdx&(d.size-1)):], h)
		d.availIdx++
	}
	d.setAvailIdx(d.availIdx)
}

// setAvailIdx stores avail.idx (driver-owned word flags|idx) atomically.
func (d *driver) setAvailIdx(idx uint16) {
	d.availIdx = idx
	d.store16(availGPA+2, idx)
}

func (d *driver) setAvailFlags(f uint16) { d.store16(availGPA, f) }

func (d *driver) setUsedEvent(v uint16) { d.store16(availGPA+4+2*uint64(d.size), v) }

// store16 atomically replaces a 16-bit field, preserving its word-mate.
func (d *driver) store16(gpa uint64, v uint16) {
	w := d.word(gpa)
	for {
		old := atomic.LoadUint32(w.w)
		if atomic.CompareAndSwapUint32(w.w, old, setHalf(old, w.shift, v)) {
			return
		}
	}
}

func (d *driver) load16(gpa uint64) uint16 { return d.word(gpa).load() }

func (d *driver) word(gpa uint64) field16 {
	d.t.Helper()
	base := gpa &^ 3
	w, shift, ok := word16(d.mem.slice(d.t, base, 4), int(gpa-base))
	if !ok {
		d.t.Fatalf("gpa %#x not atomically addressable", gpa)
	}
	return field16{w, shift}
}

func (d *driver) usedIdx() uint16   { return d.load16(usedGPA + 2) }
func (d *driver) usedFlags() uint16 { return d.load16(usedGPA) }
func (d *driver) availEvent() uint16 {
	return d.load16(usedGPA + 4 + usedElemSize*uint64(d.size))
}

// usedElem reads used.ring[i % size].
func (d *driver) usedElem(i uint16) (id, length uint32) {
	b := d.mem.slice(d.t, usedGPA+4+usedElemSize*uint64(i&(d.size-1)), usedElemSize)
	return binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:])
}
