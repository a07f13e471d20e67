package virtq

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// Desc is one packed-ring descriptor as the driver wrote it (virtio 1.2
// §2.8.13): what an inflight record keeps to resubmit a chain (Taken,
// AddInflight).
type Desc struct {
	Addr  uint64
	Len   uint32
	ID    uint16
	Flags uint16
}

// ringPos is a place in a packed descriptor ring: an index below the size
// and the wrap counter of the lap it is on (§2.8.1).
type ringPos struct {
	idx  uint16
	wrap bool
}

// encode packs p as vhost-user's VRING_BASE halves and off_wrap do: the
// index in bits 0-14, the wrap counter in bit 15.
func (p ringPos) encode() uint16 {
	if p.wrap {
		return p.idx | wrapBit
	}
	return p.idx
}

func decodePos(v uint16) ringPos { return ringPos{idx: v & offMask, wrap: v&wrapBit != 0} }

// advance moves p n descriptors on in a ring of size entries; n <= size,
// so it wraps at most once.
func (p *ringPos) advance(n, size uint16) {
	i := uint32(p.idx) + uint32(n)
	if i >= uint32(size) {
		i -= uint32(size)
		p.wrap = !p.wrap
	}
	p.idx = uint16(i)
}

// isAvail reports whether descriptor flags mark it available in the lap
// whose wrap counter is wrap: AVAIL equal to it, USED not (§2.8.1).
func isAvail(flags uint16, wrap bool) bool {
	return (flags&descFAvail != 0) == wrap && (flags&descFUsed != 0) != wrap
}

// packedRing is a Queue's state when it runs a packed ring (Config.Packed).
//
// Ownership of the shared fields:
//   - descriptor ring: the driver writes available descriptors, flags last
//     (release); we load each id|flags word atomically (acquire) and read
//     addr and len after it, once each, into taken. We write used
//     descriptors: len first (plain), then id|flags as one atomic store,
//     the release that hands the descriptor back.
//   - driver area (driverEvent): driver-written; one atomic load.
//   - device area (deviceEvent): ours alone; one atomic store.
type packedRing struct {
	desc        []byte   // the descriptor ring, Size*16 bytes
	descWords   []uint32 // the same bytes as words: id|flags of i is [4*i+3]
	driverEvent *uint32  // driver-written off_wrap|flags
	deviceEvent *uint32  // device-written off_wrap|flags
	// deviceShadow is what deviceEvent was last stored as, when
	// deviceStored: an unchanged value is not stored again.
	deviceShadow uint32
	deviceStored bool

	avail     ringPos // next descriptor to read
	used      ringPos // next used descriptor to write (pushed, maybe unpublished)
	published ringPos // used as last made visible to the driver
	// firstWord is the id|flags word of the first used descriptor pushed
	// since the last Publish, held back (firstHeld) until Publish: its
	// store makes the whole batch visible, the driver reading used
	// descriptors in ring order (§2.8.2 "Polling of available and used descriptors").
	firstSlot uint16
	firstWord uint32
	firstHeld bool
	// pushedDescs are the ring descriptors the unpublished pushes cover;
	// inFlight those of chains taken and not pushed. Their sum is at most
	// the ring size: the driver cannot legitimately make more available
	// than the ring has returned to it.
	pushedDescs uint32
	inFlight    uint32
	// chainLen[id] is the number of ring descriptors of the chain with
	// buffer ID id while it is in flight, 0 when it is not.
	chainLen []uint16
	// taken holds the descriptors of the chain Next took last, as read
	// (each once): the chain is parsed from here, and Taken returns it.
	taken []Desc
	// resubmit holds the chains AddInflight registered, by buffer ID,
	// until ChainAt walks them.
	resubmit map[uint16][]Desc
	// descLogAddr is the descriptor ring's guest address: where the used
	// descriptors we write are logged (Config.UsedLog).
	descLogAddr uint64
}

// newPacked maps a packed ring (New with Config.Packed).
func newPacked(mem Memory, cfg Config) (*Queue, error) {
	size := uint32(cfg.Size)
	switch {
	case size == 0 || size > MaxSize:
		return nil, fmt.Errorf("%w: packed ring size %d not in 1..%d", ErrConfig, size, MaxSize)
	case cfg.DescAddr%16 != 0:
		return nil, fmt.Errorf("%w: descriptor ring %#x not 16-aligned", ErrConfig, cfg.DescAddr)
	case cfg.AvailAddr%4 != 0:
		return nil, fmt.Errorf("%w: driver event suppression %#x not 4-aligned", ErrConfig, cfg.AvailAddr)
	case cfg.UsedAddr%4 != 0:
		return nil, fmt.Errorf("%w: device event suppression %#x not 4-aligned", ErrConfig, cfg.UsedAddr)
	}
	q := &Queue{mem: mem, size: uint16(size), eventIdx: cfg.EventIdx, indirect: cfg.IndirectDesc,
		usedLog: cfg.UsedLog, usedLogAddr: cfg.UsedLogAddr}
	pk := &packedRing{
		avail:       ringPos{wrap: true}, // both wrap counters start at 1 (§2.8.1)
		used:        ringPos{wrap: true},
		published:   ringPos{wrap: true},
		chainLen:    make([]uint16, size),
		taken:       make([]Desc, 0, min(size, 64)),
		descLogAddr: cfg.DescAddr,
	}
	var err error
	if pk.desc, err = translate(mem, cfg.DescAddr, uint64(descSize*size)); err != nil {
		return nil, fmt.Errorf("%w: descriptor ring: %w", ErrConfig, err)
	}
	var ok bool
	if pk.descWords, ok = ringWords(pk.desc); !ok {
		return nil, fmt.Errorf("%w: descriptor ring %#x not 4-aligned in host memory", ErrConfig, cfg.DescAddr)
	}
	drv, err := translate(mem, cfg.AvailAddr, eventSize)
	if err != nil {
		return nil, fmt.Errorf("%w: driver event suppression: %w", ErrConfig, err)
	}
	dev, err := translate(mem, cfg.UsedAddr, eventSize)
	if err != nil {
		return nil, fmt.Errorf("%w: device event suppression: %w", ErrConfig, err)
	}
	if pk.driverEvent, ok = word32(drv, eventOffOffWrap); !ok {
		return nil, fmt.Errorf("%w: driver event suppression not 4-aligned in host memory", ErrConfig)
	}
	if pk.deviceEvent, ok = word32(dev, eventOffOffWrap); !ok {
		return nil, fmt.Errorf("%w: device event suppression not 4-aligned in host memory", ErrConfig)
	}
	q.pk = pk
	return q, nil
}

// descWord is descriptor i's id|flags word.
func (pk *packedRing) descWord(i uint16) *uint32 { return &pk.descWords[4*int(i)+3] }

// availAt reports whether the descriptor at p is available in p's lap. The
// load is atomic: an acquire of what the driver wrote before the flags.
func (pk *packedRing) availAt(p ringPos) bool {
	return isAvail(getHalf(atomic.LoadUint32(pk.descWord(p.idx)), 2), p.wrap)
}

// brokenf stops the queue with an ErrBroken error.
func (q *Queue) brokenf(format string, args ...any) error {
	q.broken = fmt.Errorf("%w: %s", ErrBroken, fmt.Sprintf(format, args...))
	return q.broken
}

// nextPacked is Next on a packed ring. The chain's extent in the ring (how
// many descriptors, which buffer ID) is read first, each descriptor once;
// a chain whose extent cannot be known is ErrBroken, as the ring then has
// no known next chain. Only then are its buffers mapped, a fault there
// being ErrBadChain: the chain is consumed and its ID known.
func (q *Queue) nextPacked(c *Chain) (bool, error) {
	pk := q.pk
	if q.broken != nil {
		return false, q.broken
	}
	pos := pk.avail
	w := atomic.LoadUint32(pk.descWord(pos.idx))
	if !isAvail(getHalf(w, 2), pos.wrap) {
		return false, nil
	}
	pk.taken = pk.taken[:0]
	for n := 0; ; n++ {
		if n == int(q.size) {
			return false, q.brokenf("chain at %d runs past %d descriptors (the ring size) without ending", pk.avail.idx, q.size)
		}
		if n > 0 {
			// Written before the head's flags: the acquire above orders
			// this after them. A driver makes every descriptor of a
			// chain available, not only the head (§2.8.6).
			w = atomic.LoadUint32(pk.descWord(pos.idx))
			if !isAvail(getHalf(w, 2), pos.wrap) {
				return false, q.brokenf("descriptor %d of the chain at %d is not available", n, pk.avail.idx)
			}
		}
		d := pk.desc[descSize*int(pos.idx):]
		flags := getHalf(w, 2)
		pk.taken = append(pk.taken, Desc{
			Addr:  binary.LittleEndian.Uint64(d[packedDescOffAddr:]),
			Len:   binary.LittleEndian.Uint32(d[packedDescOffLen:]),
			ID:    getHalf(w, 0),
			Flags: flags,
		})
		pos.advance(1, q.size)
		if flags&descFNext == 0 {
			break
		}
	}
	n := uint16(len(pk.taken))
	id := pk.taken[n-1].ID // the buffer ID is in the chain's last descriptor
	switch {
	case id >= q.size:
		return false, q.brokenf("chain at %d has buffer id %d (size %d)", pk.avail.idx, id, q.size)
	case pk.chainLen[id] != 0:
		return false, q.brokenf("chain at %d reuses buffer id %d, which is in flight", pk.avail.idx, id)
	case pk.inFlight+pk.pushedDescs+uint32(n) > uint32(q.size):
		return false, q.brokenf("chain at %d: %d descriptors available beyond the %d the ring has", pk.avail.idx,
			pk.inFlight+pk.pushedDescs+uint32(n), q.size)
	}
	pk.avail = pos
	pk.chainLen[id] = n
	pk.inFlight += uint32(n)
	if q.eventIdx && !q.kicksOff {
		// Keep asking for a kick at the next descriptor while kicks are on.
		q.storeDeviceEvent(pk.avail.encode(), eventFlagsDesc)
	}
	c.Head = id
	c.Segments = c.Segments[:0]
	return true, q.walkPacked(c, pk.taken)
}

// walkPacked maps a packed chain's buffers into c.Segments: the ring
// descriptors descs, or the indirect table the only one of them points at
// (§2.8.7). Bounded as walk is: at most segmentsPerEntry segments per
// entry of the ring or table.
func (q *Queue) walkPacked(c *Chain, descs []Desc) error {
	if descs[0].Flags&descFIndirect != 0 {
		return q.walkPackedIndirect(c, descs)
	}
	writable := false
	limit := int(segmentsPerEntry * uint32(q.size))
	for _, d := range descs {
		if d.Flags&descFIndirect != 0 {
			return badChain(c.Head, "indirect descriptor inside a chain of %d", len(descs))
		}
		w := d.Flags&descFWrite != 0
		if writable && !w {
			return badChain(c.Head, "readable descriptor after a writable one")
		}
		writable = writable || w
		if err := q.appendDesc(c, d.Addr, d.Len, w, limit); err != nil {
			return err
		}
	}
	return nil
}

// walkPackedIndirect maps the indirect table of a chain's one descriptor.
// Table order is chain order; of an entry's flags only WRITE counts, and
// its buffer ID is ignored (§2.8.7).
func (q *Queue) walkPackedIndirect(c *Chain, descs []Desc) error {
	d := descs[0]
	switch {
	case !q.indirect:
		return badChain(c.Head, "indirect descriptor without VIRTIO_F_INDIRECT_DESC")
	case len(descs) != 1:
		return badChain(c.Head, "indirect descriptor in a chain of %d", len(descs))
	case d.Len == 0 || d.Len%descSize != 0:
		return badChain(c.Head, "indirect table length %d not a non-zero multiple of %d", d.Len, descSize)
	case d.Len/descSize > MaxSize:
		return badChain(c.Head, "indirect table of %d entries exceeds %d", d.Len/descSize, MaxSize)
	}
	t, err := q.indirectTable(d.Addr, d.Len)
	if err != nil {
		return badChain(c.Head, "indirect table at %#x+%d: %v", d.Addr, d.Len, err)
	}
	n := int(d.Len / descSize)
	limit := segmentsPerEntry * n
	writable := false
	for i := range n {
		// Each field read once: the guest may rewrite the table under us.
		e := t[i*descSize : i*descSize+descSize]
		addr := binary.LittleEndian.Uint64(e[packedDescOffAddr:])
		length := binary.LittleEndian.Uint32(e[packedDescOffLen:])
		w := binary.LittleEndian.Uint16(e[packedDescOffFlags:])&descFWrite != 0
		if writable && !w {
			return badChain(c.Head, "readable descriptor after a writable one")
		}
		writable = writable || w
		if err := q.appendDesc(c, addr, length, w, limit); err != nil {
			return err
		}
	}
	return nil
}

// appendDesc appends one data descriptor's buffer to c, within limit
// segments.
func (q *Queue) appendDesc(c *Chain, addr uint64, length uint32, w bool, limit int) error {
	if len(c.Segments) >= limit {
		return badChain(c.Head, "more than %d segments", limit)
	}
	if length == 0 {
		c.Segments = append(c.Segments, Segment{Writable: w})
		return nil
	}
	if err := q.appendBuffer(c, addr, uint64(length), w, limit); err != nil {
		return badChain(c.Head, "buffer %#x+%d: %v", addr, length, err)
	}
	return nil
}

// pushPacked writes the used descriptor for buffer id at the used position
// and skips the ring descriptors of its chain (§2.8.6). The first push
// after a Publish holds its flags back for Publish to store.
func (q *Queue) pushPacked(id uint16, written uint32) {
	pk := q.pk
	if id >= q.size || pk.chainLen[id] == 0 {
		// Only a caller bug gets here: Next and ChainAt hand out IDs.
		if q.broken == nil {
			q.brokenf("push of buffer id %d, which is not in flight", id)
		}
		return
	}
	n := pk.chainLen[id]
	pk.chainLen[id] = 0
	pk.inFlight -= uint32(n)
	slot := pk.used.idx
	// Plain store: the driver reads len only after the flags store below
	// (or Publish's), a release.
	binary.LittleEndian.PutUint32(pk.desc[descSize*int(slot)+packedDescOffLen:], written)
	var flags uint16
	if pk.used.wrap {
		flags = descFAvail | descFUsed
	}
	if written > 0 {
		flags |= descFWrite // §2.8.3: the device wrote into the buffer
	}
	word := setHalf(setHalf(0, 0, id), 2, flags)
	if !pk.firstHeld {
		pk.firstSlot, pk.firstWord, pk.firstHeld = slot, word, true
	} else {
		// Behind the held first descriptor: the driver, reading in ring
		// order, cannot see it before Publish.
		atomic.StoreUint32(pk.descWord(slot), word)
		q.logUsedDesc(slot)
	}
	pk.used.advance(n, q.size)
	pk.pushedDescs += uint32(n)
}

// logUsedDesc tells the dirty log, if any, of the used descriptor written
// at slot: len, id and flags (addr is left as the driver wrote it).
func (q *Queue) logUsedDesc(slot uint16) {
	if q.usedLog != nil {
		q.usedLog.LogWrite(q.pk.descLogAddr+descSize*uint64(slot)+packedDescOffLen, descSize-packedDescOffLen)
	}
}

// publishPacked stores the held first used descriptor's flags, making the
// batch visible, and reads the driver's event suppression (§2.8.10).
func (q *Queue) publishPacked() bool {
	pk := q.pk
	if !pk.firstHeld {
		return false
	}
	// Sequentially consistent: the release for the batch, and the full
	// barrier virtio requires before the driver area is read.
	atomic.StoreUint32(pk.descWord(pk.firstSlot), pk.firstWord)
	q.logUsedDesc(pk.firstSlot)
	old, n := pk.published, pk.pushedDescs
	pk.published, pk.pushedDescs, pk.firstHeld = pk.used, 0, false
	ev := atomic.LoadUint32(pk.driverEvent)
	// The first publish since the position was set: whether the driver
	// was told of what came before it is unknown (a predecessor may have
	// died between its flags store and its interrupt).
	first := !q.signalledValid
	q.signalledValid = true
	switch getHalf(ev, eventOffFlags) & eventFlagsMask {
	case eventFlagsDisable:
		return false // the driver polls, and re-checks before enabling
	case eventFlagsDesc:
		if q.eventIdx {
			return first || packedNeedEvent(getHalf(ev, eventOffOffWrap), old, n, q.size)
		}
	}
	return true // ENABLE, DESC without EVENT_IDX, or the reserved value 3
}

// packedNeedEvent reports whether the used descriptors written from old
// over n ring descriptors cover the position off_wrap names: the packed
// ring's vring_need_event. A position in the lap before old's, or ahead of
// the batch, is not covered; a hostile off_wrap only costs an interrupt.
func packedNeedEvent(offWrap uint16, old ringPos, n uint32, size uint16) bool {
	e := decodePos(offWrap)
	var d uint32
	switch {
	case e.wrap == old.wrap && e.idx >= old.idx:
		d = uint32(e.idx - old.idx)
	case e.wrap != old.wrap && e.idx < old.idx:
		d = uint32(size-old.idx) + uint32(e.idx)
	default:
		return false
	}
	return d < n
}

// storeDeviceEvent stores the device area (unless it already holds the
// value): sequentially consistent, so it is ordered before later loads of
// the descriptor ring.
func (q *Queue) storeDeviceEvent(offWrap, flags uint16) {
	pk := q.pk
	w := setHalf(setHalf(0, eventOffOffWrap, offWrap), eventOffFlags, flags)
	if pk.deviceStored && w == pk.deviceShadow {
		return
	}
	pk.deviceShadow, pk.deviceStored = w, true
	atomic.StoreUint32(pk.deviceEvent, w)
	if q.usedLog != nil {
		q.usedLog.LogWrite(q.usedLogAddr, eventSize)
	}
}

// enableKicksPacked is EnableKicks on a packed ring: kicks always, or with
// EVENT_IDX for the next descriptor, then whether it is already there.
func (q *Queue) enableKicksPacked() bool {
	if q.eventIdx {
		q.storeDeviceEvent(q.pk.avail.encode(), eventFlagsDesc)
	} else {
		q.storeDeviceEvent(0, eventFlagsEnable)
	}
	// Store above, load below: the store-load barrier pairing with the
	// driver's "flags; mb; read the device area".
	return q.pk.availAt(q.pk.avail)
}

// setPosPacked decodes a VRING_BASE half: an index past the ring breaks
// the queue rather than be used.
func (q *Queue) setPosPacked(p *ringPos, v uint16, what string) {
	np := decodePos(v)
	if np.idx >= q.size {
		q.brokenf("%s index %d (%#x) past a ring of %d", what, np.idx, v, q.size)
		return
	}
	*p = np
}

// Taken returns the descriptors of the chain the last Next took from a
// packed ring, in ring order, as they were read (each once): what an
// inflight record copies. The slice is valid until the next Next; nil for
// a split ring.
func (q *Queue) Taken() []Desc {
	if q.pk == nil {
		return nil
	}
	return q.pk.taken
}

// AddInflight registers, before the queue runs, a chain that an earlier
// device instance took from this packed ring and never completed, from
// the descriptors it recorded (inflight I/O tracking): ChainAt(id) then
// walks them, and Push(id, n) completes it, skipping len(descs) ring
// descriptors. id is the last descriptor's ID. The records are the
// front-end's memory, so they are checked as the ring is: ErrConfig for a
// split ring, ErrBroken for a chain no ring could hold.
func (q *Queue) AddInflight(descs []Desc) (id uint16, err error) {
	pk := q.pk
	switch {
	case pk == nil:
		return 0, fmt.Errorf("%w: inflight descriptors for a split ring", ErrConfig)
	case len(descs) == 0 || len(descs) > int(q.size):
		return 0, fmt.Errorf("%w: in-flight chain of %d descriptors (ring size %d)", ErrBroken, len(descs), q.size)
	}
	id = descs[len(descs)-1].ID
	switch {
	case id >= q.size:
		return 0, fmt.Errorf("%w: in-flight buffer id %d (size %d)", ErrBroken, id, q.size)
	case pk.chainLen[id] != 0:
		return 0, fmt.Errorf("%w: in-flight buffer id %d recorded twice", ErrBroken, id)
	case pk.inFlight+uint32(len(descs)) > uint32(q.size):
		return 0, fmt.Errorf("%w: %d descriptors in flight on a ring of %d", ErrBroken, pk.inFlight+uint32(len(descs)), q.size)
	}
	if pk.resubmit == nil {
		pk.resubmit = make(map[uint16][]Desc)
	}
	pk.resubmit[id] = append([]Desc(nil), descs...)
	pk.chainLen[id] = uint16(len(descs))
	pk.inFlight += uint32(len(descs))
	return id, nil
}

// chainAtPacked is ChainAt on a packed ring: the chain AddInflight
// registered for id.
func (q *Queue) chainAtPacked(id uint16, c *Chain) error {
	descs, ok := q.pk.resubmit[id]
	if !ok {
		return fmt.Errorf("%w (buffer id %d): no in-flight record", ErrBadChain, id)
	}
	delete(q.pk.resubmit, id)
	return q.walkPacked(c, descs)
}

// DescAvailable reports whether the packed ring's descriptor at pos (index
// in bits 0-14, wrap counter in bit 15) is marked available in that lap:
// how inflight recovery tells whether a used descriptor was published
// there. False for a split ring or a position past the ring.
func (q *Queue) DescAvailable(pos uint16) bool {
	p := decodePos(pos)
	if q.pk == nil || p.idx >= q.size {
		return false
	}
	return q.pk.availAt(p)
}

// Packed reports whether the queue is a packed ring.
func (q *Queue) Packed() bool { return q.pk != nil }
