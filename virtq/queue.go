package virtq

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
)

// MaxSize is the largest queue size a split virtqueue may have (virtio 1.2
// §2.7: "Queue Size ... maximum 32768").
const MaxSize = 32768

var (
	// ErrBadChain: one descriptor chain is malformed. The chain's head was
	// consumed and is valid, so the caller completes it with 0 bytes and
	// the queue keeps running.
	ErrBadChain = errors.New("virtq: malformed descriptor chain")
	// ErrBroken: the ring itself is corrupt; the queue stops and the device
	// must be marked DEVICE_NEEDS_RESET.
	ErrBroken = errors.New("virtq: ring corrupt")
	// ErrConfig: the queue's size or addresses are unusable.
	ErrConfig = errors.New("virtq: bad queue configuration")
)

// Memory translates guest-physical addresses to host byte windows; the
// vhost memory table implements it.
type Memory interface {
	// Translate returns the host bytes of [gpa, gpa+n) up to the end of
	// the region holding gpa: between 1 and n bytes, fewer when the range
	// runs past that region (the rest may lie in the next region, or be
	// unmapped), or an error when gpa itself is unmapped. n is never 0.
	Translate(gpa, n uint64) ([]byte, error)
}

// DirtyLogger records guest memory the device wrote, for live migration
// (vhost-user dirty logging). It must mark the pages after the write: the
// caller calls it once the bytes are stored.
type DirtyLogger interface {
	// LogWrite marks the guest-physical range [gpa, gpa+n) written.
	LogWrite(gpa, n uint64)
}

// Config describes a queue as the driver laid it out (vhost-user
// SET_VRING_NUM / SET_VRING_ADDR) plus the negotiated ring features.
type Config struct {
	Size uint16
	// The ring's three areas. For a packed ring (Packed) they are the
	// descriptor ring, the driver's event suppression (Driver Area) and
	// the device's (Device Area), as vhost-user sends them.
	DescAddr, AvailAddr, UsedAddr uint64
	EventIdx, IndirectDesc        bool
	// Packed: the ring is a packed virtqueue (VIRTIO_F_RING_PACKED,
	// virtio 1.2 §2.8), whose size need not be a power of 2. Its used
	// descriptors are written into the descriptor ring, so with UsedLog
	// they are logged at their offset from DescAddr, and the device area
	// at UsedLogAddr.
	Packed bool
	// UsedLog, if set, is told of every store to the used ring (elements,
	// flags and index, avail_event), right after it, at the ring's offset
	// from UsedLogAddr (vhost-user's log_guest_addr, which need not be
	// UsedAddr). Nil: nothing is logged, at the cost of one nil test.
	UsedLog     DirtyLogger
	UsedLogAddr uint64
}

// Ring flag bits (virtio 1.2 §2.7.5, §2.7.6, §2.7.8).
const (
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4

	availFNoInterrupt = 1
	usedFNoNotify     = 1
)

const (
	descSize     = 16
	usedElemSize = 8
	// casAttempts bounds the compare-and-swap that writes avail_event. It
	// only fails while the guest keeps rewriting the two bytes after the
	// used ring; after that many failures setAvailEvent stores the field
	// with a plain 16-bit store instead, so a guest doing so can neither
	// keep the worker retrying nor stop it from arming its kick.
	casAttempts = 16
)

// field16 is a 16-bit little-endian ring field loaded atomically through
// the aligned 32-bit word that contains it.
type field16 struct {
	w     *uint32
	shift int // byte offset of the field inside *w
}

// load is an atomic (sequentially consistent, hence acquire) load.
func (f field16) load() uint16 { return getHalf(atomic.LoadUint32(f.w), f.shift) }

// getHalf extracts the little-endian 16-bit value at byte offset shift of a
// word loaded in native byte order.
func getHalf(w uint32, shift int) uint16 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], w)
	return binary.LittleEndian.Uint16(b[shift&2:])
}

// setHalf returns w with the little-endian 16-bit value at byte offset
// shift replaced by v, leaving the other half untouched.
func setHalf(w uint32, shift int, v uint16) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], w)
	binary.LittleEndian.PutUint16(b[shift&2:], v)
	return binary.NativeEndian.Uint32(b[:])
}

// Queue is the device side of one split virtqueue. It is not safe for
// concurrent use: one goroutine owns a queue.
type Queue struct {
	mem      Memory
	size     uint16
	eventIdx bool
	indirect bool

	desc      []byte // descriptor table, driver-written
	availRing []byte // avail.ring[size], driver-written
	usedRing  []byte // used.ring[size], device-written

	availFlags field16 // driver-written
	availIdx   field16 // driver-written
	usedEvent  field16 // driver-written; only with EVENT_IDX
	usedHdr    *uint32 // used.flags|used.idx: device-written, both halves ours
	availEvent *uint32 // used.avail_event + 2 guest bytes; only with EVENT_IDX

	lastAvail uint16 // next avail ring slot to consume
	usedIdx   uint16 // next used ring slot to fill (pushed, maybe unpublished)
	published uint16 // used.idx as last stored to the ring
	usedFlags uint16 // our shadow of used.flags
	// signalledValid is false until the first Publish after creation or a
	// base change: published is then not known to the driver, so the next
	// Publish notifies unconditionally rather than risk a lost interrupt.
	signalledValid bool
	kicksOff       bool
	broken         error

	// tableCopy holds an indirect table that straddles adjacent guest
	// memory regions while its chain is walked (grown on demand, at most
	// MaxSize descriptors).
	tableCopy []byte
	// fence is touched by an atomic read-modify-write only: a full
	// barrier after setAvailEvent's plain store (see there).
	fence uint32
	// casRace, set by tests only, runs between setAvailEvent's load and
	// its compare-and-swap: where a guest's store makes the swap fail.
	casRace func()

	// usedLog is told of each used ring store (Config.UsedLog); nil
	// when not logging. usedLogAddr is where the used ring's first byte
	// is logged. Last, so that the fields every request touches keep
	// their places.
	usedLog     DirtyLogger
	usedLogAddr uint64

	// pk is the packed ring's state (packed.go), nil for a split ring:
	// every method that differs tests it first.
	pk *packedRing
}

// CheckSize reports whether size may be a split virtqueue's size (virtio 1.2
// §2.7: a power of 2 up to MaxSize). A transport checks it when the driver
// sets the size, before New sees it.
func CheckSize(size uint32) error {
	if size == 0 || size > MaxSize || size&(size-1) != 0 {
		return fmt.Errorf("%w: size %d not a power of 2 in 1..%d", ErrConfig, size, MaxSize)
	}
	return nil
}

// CheckAlignment reports whether the three ring areas are aligned as virtio
// 1.2 §2.7 requires: descriptor table 16, available ring 2, used ring 4.
func CheckAlignment(desc, avail, used uint64) error {
	switch {
	case desc%16 != 0:
		return fmt.Errorf("%w: descriptor table %#x not 16-aligned", ErrConfig, desc)
	case avail%2 != 0:
		return fmt.Errorf("%w: avail ring %#x not 2-aligned", ErrConfig, avail)
	case used%4 != 0:
		return fmt.Errorf("%w: used ring %#x not 4-aligned", ErrConfig, used)
	}
	return nil
}

// New maps the queue's rings. It validates the size (power of 2,
// 1..MaxSize), the alignments (desc 16, avail 2, used 4) and that each ring
// area translates. The used index is taken from the ring, which is 0 on a
// fresh queue and the driver-visible value on reconnect.
//
// With cfg.Packed it maps a packed ring instead: size 1..MaxSize, the
// descriptor ring 16-aligned and both event suppression areas 4-aligned;
// the positions start at 0 with both wrap counters 1 (SetLastAvail and
// SetUsedIdx restore others).
func New(mem Memory, cfg Config) (*Queue, error) {
	if cfg.Packed {
		return newPacked(mem, cfg)
	}
	size := uint32(cfg.Size)
	if err := CheckSize(size); err != nil {
		return nil, err
	}
	if err := CheckAlignment(cfg.DescAddr, cfg.AvailAddr, cfg.UsedAddr); err != nil {
		return nil, err
	}
	q := &Queue{mem: mem, size: uint16(size), eventIdx: cfg.EventIdx, indirect: cfg.IndirectDesc,
		usedLog: cfg.UsedLog, usedLogAddr: cfg.UsedLogAddr}
	var err error
	if q.desc, err = translate(mem, cfg.DescAddr, uint64(descSize*size)); err != nil {
		return nil, fmt.Errorf("%w: descriptor table: %w", ErrConfig, err)
	}
	// Both event fields count in the ring sizes whether or not EVENT_IDX is
	// negotiated (virtio 1.2 §2.7: avail 6+2*size, used 6+8*size).
	availLen := 6 + 2*size
	avail, err := translate(mem, cfg.AvailAddr, uint64(availLen))
	if err != nil {
		return nil, fmt.Errorf("%w: avail ring: %w", ErrConfig, err)
	}
	usedLen := 6 + usedElemSize*size
	if cfg.EventIdx {
		// avail_event is written with a 32-bit compare-and-swap, which
		// needs the two bytes after the used ring to be addressable. The
		// ring is 4-aligned and 6+8*size long, so they sit before the next
		// 4-byte boundary: inside any 4-aligned memory region.
		usedLen += 2
	}
	used, err := translate(mem, cfg.UsedAddr, uint64(usedLen))
	if err != nil {
		return nil, fmt.Errorf("%w: used ring: %w", ErrConfig, err)
	}
	q.availRing = avail[4 : 4+2*size]
	q.usedRing = used[4 : 4+usedElemSize*size]

	if q.availFlags, err = q.field(avail, cfg.AvailAddr, 0); err != nil {
		return nil, err
	}
	if q.availIdx, err = q.field(avail, cfg.AvailAddr, 2); err != nil {
		return nil, err
	}
	var ok bool
	if q.usedHdr, ok = word32(used, 0); !ok {
		return nil, fmt.Errorf("%w: used ring %#x not 4-aligned in host memory", ErrConfig, cfg.UsedAddr)
	}
	if cfg.EventIdx {
		if q.usedEvent, err = q.field(avail, cfg.AvailAddr, int(4+2*size)); err != nil {
			return nil, err
		}
		if q.availEvent, ok = word32(used, int(4+usedElemSize*size)); !ok {
			return nil, fmt.Errorf("%w: avail_event not 4-aligned in host memory", ErrConfig)
		}
	}
	// Acquire: nothing of the used ring is read, but the index must be the
	// one the driver has seen.
	q.usedIdx = getHalf(atomic.LoadUint32(q.usedHdr), 2)
	q.published = q.usedIdx
	return q, nil
}

// translate returns the n bytes at gpa as one window, for the ring areas,
// which are accessed in place and so must lie inside one region. It checks
// the window's length, so a misbehaving Memory cannot make us index out of
// range.
func translate(mem Memory, gpa, n uint64) ([]byte, error) {
	b, err := mem.Translate(gpa, n)
	if err != nil {
		return nil, err
	}
	if uint64(len(b)) != n {
		if len(b) > 0 && uint64(len(b)) < n {
			return nil, fmt.Errorf("%#x+%d crosses a guest memory region boundary after %d bytes", gpa, n, len(b))
		}
		return nil, fmt.Errorf("translate %#x+%d: got %d bytes", gpa, n, len(b))
	}
	return b, nil
}

// window is one step of a range walk: the bytes at gpa up to the end of
// its region, at most n, checked as translate checks.
func window(mem Memory, gpa, n uint64) ([]byte, error) {
	b, err := mem.Translate(gpa, n)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 || uint64(len(b)) > n || gpa+uint64(len(b)) < gpa {
		return nil, fmt.Errorf("translate %#x+%d: got %d bytes", gpa, n, len(b))
	}
	return b, nil
}

// field locates a driver-written 16-bit field at win[off:] (win maps base).
// When the aligned word containing it spills outside the ring area, the word
// is mapped on its own: we only load it, so the guest bytes next to the
// field are never modified.
func (q *Queue) field(win []byte, base uint64, off int) (field16, error) {
	w, shift, ok := word16(win, off)
	if ok {
		return field16{w, shift}, nil
	}
	if shift&1 != 0 {
		return field16{}, fmt.Errorf("%w: ring field at %#x not 2-aligned in host memory", ErrConfig, base+uint64(off))
	}
	gpa := base + uint64(off) - uint64(shift)
	ww, err := translate(q.mem, gpa, 4)
	if err != nil {
		return field16{}, fmt.Errorf("%w: ring field at %#x: %w", ErrConfig, base+uint64(off), err)
	}
	if w, s, ok := word16(ww, shift); ok && s == shift {
		return field16{w, s}, nil
	}
	return field16{}, fmt.Errorf("%w: ring field at %#x not atomically addressable", ErrConfig, base+uint64(off))
}

// Size is the queue size.
func (q *Queue) Size() uint16 { return q.size }

// Err returns the ErrBroken error that stopped the queue, or nil.
func (q *Queue) Err() error { return q.broken }

// LastAvail is the next avail ring index to consume (GET_VRING_BASE). For
// a packed ring it is the next descriptor's index in bits 0-14 and the
// driver's wrap counter in bit 15, as vhost-user's VRING_BASE carries it.
func (q *Queue) LastAvail() uint16 {
	if q.pk != nil {
		return q.pk.avail.encode()
	}
	return q.lastAvail
}

// SetLastAvail restores the next avail ring index (SET_VRING_BASE), for a
// packed ring encoded as LastAvail reports it. A packed index past the
// ring stops the queue with ErrBroken.
func (q *Queue) SetLastAvail(idx uint16) {
	q.signalledValid = false
	if q.pk != nil {
		q.setPosPacked(&q.pk.avail, idx, "last avail")
		return
	}
	q.lastAvail = idx
}

// UsedIdx is the used index including pushed but unpublished elements; for
// a packed ring the next used descriptor's position, encoded as LastAvail.
func (q *Queue) UsedIdx() uint16 {
	if q.pk != nil {
		return q.pk.used.encode()
	}
	return q.usedIdx
}

// SetUsedIdx restores the used index (reconnect) and stores it to the ring.
// Unpublished pushes are dropped. A packed ring keeps its used position in
// the device alone (vhost-user sends it in SET_VRING_BASE's high half):
// nothing is stored, and an index past the ring stops the queue.
func (q *Queue) SetUsedIdx(idx uint16) {
	q.signalledValid = false
	if q.pk != nil {
		pk := q.pk
		q.setPosPacked(&pk.used, idx, "used")
		pk.published, pk.pushedDescs, pk.firstHeld = pk.used, 0, false
		return
	}
	q.usedIdx = idx
	q.published = idx
	q.storeUsedHdr()
}

// storeUsedHdr stores used.flags|used.idx as one word. Sequentially
// consistent, so it is a release for the used elements written before it
// and is ordered before any later load of avail fields.
func (q *Queue) storeUsedHdr() {
	var b [4]byte
	binary.LittleEndian.PutUint16(b[0:], q.usedFlags)
	binary.LittleEndian.PutUint16(b[2:], q.published)
	atomic.StoreUint32(q.usedHdr, binary.NativeEndian.Uint32(b[:]))
	if q.usedLog != nil {
		q.usedLog.LogWrite(q.usedLogAddr, 4) // used.flags and used.idx
	}
}

// Next pops the next available chain into c, reusing c.Segments.
//
// ok=false, err=nil: the ring is empty. ok=true, err=nil: c holds a chain.
// ok=true, err wraps ErrBadChain: c.Head was consumed and must be pushed
// (with 0 bytes); c.Segments holds the descriptors parsed before the fault.
// ok=false, err wraps ErrBroken: the ring is corrupt and the queue stopped;
// every later call returns the same error.
//
// On a packed ring c.Head is the chain's buffer ID. A chain whose extent
// in the ring cannot be known (not ending within the ring size, a
// descriptor in it not available), a buffer ID past the ring or one
// already in flight are ErrBroken.
func (q *Queue) Next(c *Chain) (ok bool, err error) {
	if q.pk != nil {
		return q.nextPacked(c)
	}
	if q.broken != nil {
		return false, q.broken
	}
	// Acquire: pairs with the driver's barrier before its avail.idx store,
	// so the ring entry and descriptors read below are the published ones.
	avail := q.availIdx.load()
	pending := avail - q.lastAvail
	if pending == 0 {
		return false, nil
	}
	if pending > q.size {
		q.broken = fmt.Errorf("%w: avail idx %d is %d entries past %d (size %d)", ErrBroken, avail, pending, q.lastAvail, q.size)
		return false, q.broken
	}
	slot := int(q.lastAvail & (q.size - 1))
	head := binary.LittleEndian.Uint16(q.availRing[2*slot:])
	if head >= q.size {
		q.broken = fmt.Errorf("%w: avail ring entry %d holds head %d (size %d)", ErrBroken, q.lastAvail, head, q.size)
		return false, q.broken
	}
	q.lastAvail++
	if q.eventIdx && !q.kicksOff {
		// Keep asking for a kick at the next entry while kicks are on.
		q.setAvailEvent(q.lastAvail)
	}
	c.Head = head
	c.Segments = c.Segments[:0]
	if err := q.walk(c); err != nil {
		return true, err
	}
	return true, nil
}

// Push adds a used element for head; it is not visible until Publish. On a
// packed ring head is a buffer ID Next or ChainAt returned; pushing one not
// in flight stops the queue with ErrBroken.
func (q *Queue) Push(head uint16, written uint32) {
	if q.pk != nil {
		q.pushPacked(head, written)
		return
	}
	off := int(q.usedIdx&(q.size-1)) * usedElemSize
	e := q.usedRing[off : off+usedElemSize]
	// Plain stores: the driver reads elements only after loading used.idx,
	// and Publish's store of used.idx is a release.
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	if q.usedLog != nil {
		// Before Publish stores used.idx: the element's page is marked
		// before the index that makes it the driver's.
		q.usedLog.LogWrite(q.usedLogAddr+4+uint64(off), usedElemSize)
	}
	q.usedIdx++
}

// Publish makes pushed used elements visible and reports whether the
// driver asked to be interrupted: with EVENT_IDX whether used_event was
// crossed, otherwise whether avail.flags lacks NO_INTERRUPT.
//
// On a packed ring the driver's event suppression decides: DISABLE no,
// ENABLE yes, DESC (with EVENT_IDX) whether the batch covered its
// off_wrap.
func (q *Queue) Publish() (notify bool) {
	if q.pk != nil {
		return q.publishPacked()
	}
	old, now := q.published, q.usedIdx
	if old == now {
		return false
	}
	q.published = now
	q.storeUsedHdr()
	// The loads below come after the sequentially consistent used.idx
	// store: this is the full barrier virtio requires between publishing
	// used entries and reading the driver's suppression fields.
	if q.eventIdx {
		ev := q.usedEvent.load()
		if !q.signalledValid {
			q.signalledValid = true
			return true
		}
		return needEvent(ev, now, old)
	}
	return q.availFlags.load()&availFNoInterrupt == 0
}

// needEvent reports whether moving an index from old to now crossed event
// (virtio 1.2 §2.7.10: vring_need_event), modulo 2^16.
func needEvent(event, now, old uint16) bool {
	return now-event-1 < now-old
}

// DisableKicks asks the driver not to notify us. With EVENT_IDX nothing is
// written: avail_event stays where it was, so once passed the driver stops
// kicking. Otherwise used.flags gets NO_NOTIFY.
//
// On a packed ring the device area gets DISABLE either way.
func (q *Queue) DisableKicks() {
	if q.kicksOff {
		return
	}
	q.kicksOff = true
	if q.pk != nil {
		q.storeDeviceEvent(0, eventFlagsDisable)
		return
	}
	if !q.eventIdx {
		q.usedFlags |= usedFNoNotify
		q.storeUsedHdr()
	}
}

// EnableKicks asks the driver to notify us of new work and reports whether
// work arrived before the request was visible (the caller must then poll
// again, or it would sleep through that work).
func (q *Queue) EnableKicks() (more bool) {
	q.kicksOff = false
	if q.broken != nil {
		return false
	}
	if q.pk != nil {
		return q.enableKicksPacked()
	}
	if q.eventIdx {
		q.setAvailEvent(q.lastAvail)
	} else {
		q.usedFlags &^= usedFNoNotify
		q.storeUsedHdr()
	}
	// Sequentially consistent store above, load below: the store-load
	// barrier pairing with the driver's "store avail.idx; mb; read
	// flags/avail_event", so at least one side sees the other.
	return q.availIdx.load() != q.lastAvail
}

// setAvailEvent stores used.avail_event (unless it already holds v), with a
// full barrier after the store. Its aligned word also holds two guest bytes
// past the used ring, so the store is a compare-and-swap that leaves them
// as found. A guest that keeps changing them makes the swap fail; after
// casAttempts failures the field is written with a plain 16-bit store,
// which does not touch them either (every Go platform stores an aligned
// halfword in one instruction), and an atomic read-modify-write gives the
// barrier the swap would have. Bounded either way: a guest cannot keep the
// worker here, nor make it poll instead of sleeping on its kick.
func (q *Queue) setAvailEvent(v uint16) {
	for range casAttempts {
		old := atomic.LoadUint32(q.availEvent)
		nw := setHalf(old, 0, v)
		if q.casRace != nil {
			q.casRace()
		}
		if old == nw {
			return // unchanged: nothing stored, nothing to log
		}
		if atomic.CompareAndSwapUint32(q.availEvent, old, nw) {
			q.logAvailEvent()
			return
		}
	}
	storeLow16(q.availEvent, v)
	atomic.AddUint32(&q.fence, 1)
	q.logAvailEvent()
}

// logAvailEvent tells the dirty log, if any, of a store to avail_event.
func (q *Queue) logAvailEvent() {
	if q.usedLog != nil {
		q.usedLog.LogWrite(q.usedLogAddr+4+usedElemSize*uint64(q.size), 2)
	}
}
