package frontend

import (
	"encoding/binary"
	"sync/atomic"
)

// The driver side of a packed virtqueue (virtio 1.2 §2.8, "Supplying
// Buffers to The Device" and "Receiving Used Buffers From The Device"),
// behind Ring's methods: Queue stages a chain with WriteDesc as for a
// split ring, and PushAvail lays it out in the descriptor ring at the next
// positions with the head's index as its buffer ID. The guest memory
// layout is virtq's (packed_layout.go): descriptors of 16 bytes with id at
// 12 and flags at 14, event suppression areas of off_wrap then flags.

// Packed-only descriptor flags and event suppression values (§2.8.1,
// §2.8.10).
const (
	descFAvail        = 1 << 7
	descFUsed         = 1 << 15
	eventFlagsEnable  = 0
	eventFlagsDisable = 1
	eventFlagsDesc    = 2
	wrapBit           = 1 << 15
)

// stagedDesc is a descriptor WriteDesc staged for the next PushAvail.
type stagedDesc struct {
	addr        uint64
	n           uint32
	flags, next uint16
}

// packedPos is a position in the descriptor ring and its lap's wrap
// counter.
type packedPos struct {
	idx  uint16
	wrap bool
}

func (p packedPos) encode() uint16 {
	if p.wrap {
		return p.idx | wrapBit
	}
	return p.idx
}

func (p *packedPos) advance(n, size uint16) {
	i := uint32(p.idx) + uint32(n)
	if i >= uint32(size) {
		i -= uint32(size)
		p.wrap = !p.wrap
	}
	p.idx = uint16(i)
}

// packedDriver is a Ring's packed state. Driver-owned: staged, positions,
// chain lengths; shared with the device: the descriptor ring (the id|flags
// words atomically) and both event areas (one atomic word each).
type packedDriver struct {
	staged   []stagedDesc
	avail    packedPos // next descriptor to make available
	used     packedPos // next used descriptor to read
	notified packedPos // avail at the last Notify
	added    uint32    // descriptors made available since the last Notify
	chainLen []uint16  // buffer id -> ring descriptors, while outstanding
	popped   uint16    // used descriptors PopUsed returned, modulo 2^16
	// held is the first chain's head word while HoldAvail holds a batch:
	// stored by ReleaseAvail, it makes the whole batch available.
	heldSlot uint16
	heldWord uint32
	held     bool
}

func newPackedDriver(size uint16) *packedDriver {
	return &packedDriver{staged: make([]stagedDesc, size), avail: packedPos{wrap: true},
		used: packedPos{wrap: true}, notified: packedPos{wrap: true}, chainLen: make([]uint16, size)}
}

// descWord is descriptor i's id|flags word (offset 12).
func (r *Ring) descWord(i uint16) *uint32 { w, _ := word(r.desc, 16*int(i)+12); return w }

func idFlags(id, flags uint16) uint32 {
	var b [4]byte
	binary.LittleEndian.PutUint16(b[0:], id)
	binary.LittleEndian.PutUint16(b[2:], flags)
	return binary.NativeEndian.Uint32(b[:])
}

func splitIDFlags(w uint32) (id, flags uint16) {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], w)
	return binary.LittleEndian.Uint16(b[0:]), binary.LittleEndian.Uint16(b[2:])
}

// pushPacked lays the chain staged at head into the ring, the head's
// flags stored last (or held for ReleaseAvail).
func (r *Ring) pushPacked(head uint16) {
	p := r.packed
	first := p.avail
	var headWord uint32
	i := head % r.Size
	n := uint16(0)
	for {
		s := p.staged[i]
		slot := p.avail.idx
		d := r.desc[16*int(slot):]
		binary.LittleEndian.PutUint64(d[0:], s.addr)
		binary.LittleEndian.PutUint32(d[8:], s.n)
		f := s.flags &^ (descFAvail | descFUsed)
		if p.avail.wrap {
			f |= descFAvail
		} else {
			f |= descFUsed
		}
		w := idFlags(head, f)
		if n == 0 {
			headWord = w
		} else {
			atomic.StoreUint32(r.descWord(slot), w)
		}
		p.avail.advance(1, r.Size)
		n++
		if s.flags&DescFNext == 0 || n == r.Size {
			break
		}
		i = s.next % r.Size
	}
	p.chainLen[head%r.Size] = n
	p.added += uint32(n)
	if r.holdAvail && !p.held {
		p.heldSlot, p.heldWord, p.held = first.idx, headWord, true
		return
	}
	// Release: the chain's other descriptors are written before it.
	atomic.StoreUint32(r.descWord(first.idx), headWord)
}

// releasePacked makes a held batch available.
func (r *Ring) releasePacked() {
	if p := r.packed; p.held {
		p.held = false
		atomic.StoreUint32(r.descWord(p.heldSlot), p.heldWord)
	}
}

// notifyPacked kicks unless the device area says not to: DISABLE, or with
// EVENT_IDX a DESC position outside what was made available since the
// last Notify.
func (r *Ring) notifyPacked() bool {
	p := r.packed
	old, n := p.notified, p.added
	p.notified, p.added = p.avail, 0
	if n == 0 {
		return false
	}
	// The flags stores were sequentially consistent, and so is this load:
	// the full barrier §2.8.21.2 asks for before reading the device area.
	offWrap, flags := splitIDFlags(atomic.LoadUint32(r.usedWord()))
	need := true
	switch flags & 3 {
	case eventFlagsDisable:
		need = false
	case eventFlagsDesc:
		if r.EventIdx {
			need = packedCovers(offWrap, old, n, r.Size)
		}
	}
	if need {
		r.ForceKick()
	}
	return need
}

// packedCovers reports whether n descriptors from old cover the position
// off_wrap names (a lap behind old, or past them, is not covered).
func packedCovers(offWrap uint16, old packedPos, n uint32, size uint16) bool {
	idx, wrap := offWrap&^wrapBit, offWrap&wrapBit != 0
	var d uint32
	switch {
	case wrap == old.wrap && idx >= old.idx:
		d = uint32(idx - old.idx)
	case wrap != old.wrap && idx < old.idx:
		d = uint32(size-old.idx) + uint32(idx)
	default:
		return false
	}
	return d < n
}

// popUsedPacked reads the next used descriptor, if the device wrote one,
// and skips the descriptors of its chain. With EVENT_IDX it asks to be
// interrupted for the next one.
func (r *Ring) popUsedPacked() (id, n uint32, ok bool) {
	p := r.packed
	bid, flags := splitIDFlags(atomic.LoadUint32(r.descWord(p.used.idx)))
	if !isUsed(flags, p.used.wrap) {
		return 0, 0, false
	}
	p.popped++
	n = binary.LittleEndian.Uint32(r.desc[16*int(p.used.idx)+8:])
	skip := uint16(1) // an id not outstanding: Queue.Reap reports it
	if bid < r.Size && p.chainLen[bid] != 0 {
		skip, p.chainLen[bid] = p.chainLen[bid], 0
	}
	p.used.advance(skip, r.Size)
	if r.EventIdx {
		atomic.StoreUint32(r.availWord(), idFlags(p.used.encode(), eventFlagsDesc))
	}
	return uint32(bid), n, true
}

// isUsed reports whether flags mark a descriptor used in the lap of wrap:
// AVAIL and USED both equal to it (§2.8.1).
func isUsed(flags uint16, wrap bool) bool {
	return (flags&descFUsed != 0) == wrap && (flags&descFAvail != 0) == wrap
}

// usedReady reports whether the next used descriptor is there (the load
// is the acquire PopUsed relies on too).
func (r *Ring) usedReady() bool {
	_, flags := splitIDFlags(atomic.LoadUint32(r.descWord(r.packed.used.idx)))
	return isUsed(flags, r.packed.used.wrap)
}

// availWord and usedWord are the driver and device event areas.
func (r *Ring) availWord() *uint32 { w, _ := word(r.avail, 0); return w }
func (r *Ring) usedWord() *uint32  { w, _ := word(r.used, 0); return w }

// putTableDesc writes indirect table entry e at d in the ring's layout:
// split (flags at 12, next at 14) or packed (id at 12, ignored; flags at
// 14; order is the chain, NEXT unused).
func (r *Ring) putTableDesc(d []byte, e elem, more bool, next uint16) {
	if r.packed == nil {
		putDesc(d, e, more, next)
		return
	}
	var fl uint16
	if e.write {
		fl |= DescFWrite
	}
	binary.LittleEndian.PutUint64(d[0:], e.addr)
	binary.LittleEndian.PutUint32(d[8:], e.n)
	binary.LittleEndian.PutUint16(d[12:], 0)
	binary.LittleEndian.PutUint16(d[14:], fl)
}

// InitialBase is SET_VRING_BASE's num for a fresh ring: 0 for a split
// ring; for a packed one both positions 0 with wrap counters 1, avail in
// bits 0-15 and used in 16-31 (vhost-user "VHOST_USER_SET_VRING_BASE").
func (r *Ring) InitialBase() uint32 {
	if r.packed == nil {
		return 0
	}
	return wrapBit | wrapBit<<16
}

// ResumeBase is SET_VRING_BASE's num to restart the ring after the
// back-end went away, as QEMU sends it: where the driver has seen used
// buffers up to, for the avail half too (a back-end with an inflight
// region knows better and resubmits what it took).
func (r *Ring) ResumeBase() uint32 {
	if r.packed == nil {
		return uint32(r.UsedIdx())
	}
	u := uint32(r.packed.used.encode())
	return u | u<<16
}

// Packed reports whether the ring is a packed virtqueue.
func (r *Ring) Packed() bool { return r.packed != nil }
