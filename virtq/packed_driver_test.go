package virtq

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
)

// Test layout of a packed ring: the descriptor ring where a split ring's
// table is, the driver area where its avail ring is, the device area
// where its used ring is.
const (
	driverAreaGPA = availGPA
	deviceAreaGPA = usedGPA
)

// packedDriver is the test-only driver side of a packed ring, written from
// virtio 1.2 §2.8.21 ("Supplying Buffers to The Device", "Receiving Used
// Buffers").
type packedDriver struct {
	t        testing.TB
	mem      *guestMem
	size     uint16
	avail    ringPos           // next descriptor to make available
	used     ringPos           // next used descriptor to read
	chainLen map[uint16]uint16 // buffer id -> descriptors, while outstanding
	heap     uint64
}

func newPackedDriver(t testing.TB, size uint16) *packedDriver {
	return &packedDriver{t: t, mem: newGuestMem(), size: size, avail: ringPos{wrap: true},
		used: ringPos{wrap: true}, chainLen: map[uint16]uint16{}, heap: bufBase}
}

func (d *packedDriver) config(eventIdx, indirect bool) Config {
	return Config{Size: d.size, DescAddr: descGPA, AvailAddr: driverAreaGPA, UsedAddr: deviceAreaGPA,
		EventIdx: eventIdx, IndirectDesc: indirect, Packed: true}
}

func (d *packedDriver) queue(eventIdx, indirect bool) *Queue {
	d.t.Helper()
	q, err := New(d.mem, d.config(eventIdx, indirect))
	if err != nil {
		d.t.Fatal(err)
	}
	return q
}

func (d *packedDriver) alloc(n uint64, fill byte) uint64 {
	gpa := (d.heap + 15) &^ 15
	d.heap = gpa + n
	b := d.mem.slice(d.t, gpa, n)
	for i := range b {
		b[i] = fill
	}
	return gpa
}

// word is the id|flags word of descriptor i.
func (d *packedDriver) word(i uint16) *uint32 {
	d.t.Helper()
	w, ok := word32(d.mem.slice(d.t, descGPA+descSize*uint64(i), descSize), packedDescOffID)
	if !ok {
		d.t.Fatal("descriptor word not aligned")
	}
	return w
}

// availFlags are flags made available in the lap of wrap.
func availFlags(f uint16, wrap bool) uint16 {
	if wrap {
		return f | descFAvail
	}
	return f | descFUsed
}

// add makes a buffer with ID id available: descs at the next positions,
// NEXT set on all but the last, the ID in the last, the AVAIL/USED bits of
// each position's lap, and the first descriptor's flags stored last
// (release). It returns the head position.
func (d *packedDriver) add(id uint16, descs ...desc) ringPos {
	d.t.Helper()
	head := d.avail
	var headWord uint32
	for i, ds := range descs {
		f := ds.flags
		if i < len(descs)-1 {
			f |= descFNext
		}
		did := ds.next // desc.next carries a descriptor's own id field
		if i == len(descs)-1 {
			did = id
		}
		e := d.mem.slice(d.t, descGPA+descSize*uint64(d.avail.idx), descSize)
		binary.LittleEndian.PutUint64(e[packedDescOffAddr:], ds.addr)
		binary.LittleEndian.PutUint32(e[packedDescOffLen:], ds.len)
		w := setHalf(setHalf(0, 0, did), 2, availFlags(f, d.avail.wrap))
		if i == 0 {
			headWord = w
		} else {
			atomic.StoreUint32(d.word(d.avail.idx), w)
		}
		d.avail.advance(1, d.size)
	}
	atomic.StoreUint32(d.word(head.idx), headWord)
	d.chainLen[id] = uint16(len(descs))
	return head
}

// writeRaw stores descriptor i as given, flags included (hostile rings).
func (d *packedDriver) writeRaw(i uint16, addr uint64, n uint32, id, flags uint16) {
	e := d.mem.slice(d.t, descGPA+descSize*uint64(i), descSize)
	binary.LittleEndian.PutUint64(e[packedDescOffAddr:], addr)
	binary.LittleEndian.PutUint32(e[packedDescOffLen:], n)
	atomic.StoreUint32(d.word(i), setHalf(setHalf(0, 0, id), 2, flags))
}

// writeTable writes an indirect table at gpa.
func (d *packedDriver) writeTable(gpa uint64, descs ...desc) {
	b := d.mem.slice(d.t, gpa, descSize*uint64(len(descs)))
	for i, ds := range descs {
		e := b[i*descSize:]
		binary.LittleEndian.PutUint64(e[packedDescOffAddr:], ds.addr)
		binary.LittleEndian.PutUint32(e[packedDescOffLen:], ds.len)
		binary.LittleEndian.PutUint16(e[packedDescOffID:], ds.next)
		binary.LittleEndian.PutUint16(e[packedDescOffFlags:], ds.flags)
	}
}

// popUsed reads the next used descriptor, if the device wrote one, and
// skips its chain's descriptors.
func (d *packedDriver) popUsed() (id uint16, n uint32, flags uint16, ok bool) {
	d.t.Helper()
	w := atomic.LoadUint32(d.word(d.used.idx))
	flags = getHalf(w, 2)
	if (flags&descFUsed != 0) != d.used.wrap || (flags&descFAvail != 0) != d.used.wrap {
		return 0, 0, 0, false
	}
	id = getHalf(w, 0)
	n = binary.LittleEndian.Uint32(d.mem.slice(d.t, descGPA+descSize*uint64(d.used.idx)+packedDescOffLen, 4))
	k, known := d.chainLen[id]
	if !known {
		d.t.Fatalf("used descriptor at %d has buffer id %d, not outstanding", d.used.idx, id)
	}
	delete(d.chainLen, id)
	d.used.advance(k, d.size)
	return id, n, flags, true
}

// setDriverEvent stores the driver area.
func (d *packedDriver) setDriverEvent(offWrap, flags uint16) {
	w, _ := word32(d.mem.slice(d.t, driverAreaGPA, eventSize), 0)
	atomic.StoreUint32(w, setHalf(setHalf(0, 0, offWrap), 2, flags))
}

// deviceEvent loads the device area.
func (d *packedDriver) deviceEvent() (offWrap, flags uint16) {
	w, _ := word32(d.mem.slice(d.t, deviceAreaGPA, eventSize), 0)
	v := atomic.LoadUint32(w)
	return getHalf(v, 0), getHalf(v, 2)
}
