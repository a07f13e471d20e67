package vhost

// Inflight I/O tracking for packed virtqueues: QEMU docs/interop/
// vhost-user.rst, "Inflight I/O tracking", QueueRegionPacked. A packed
// ring's used descriptors overwrite the available ones, so the region keeps
// a copy of every descriptor taken (DescStatePacked entries, linked in a
// free list), and the used position, which is in no guest memory, with its
// wrap counter. Each update a crash may cut short has an "old_" copy to
// roll back to. Every byte offset is in this file; inflight_packed_test.go
// pins them. Host byte order, as the split layout.

import (
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// Layout of one queue's region (QueueRegionPacked):
//
//	offset 0   u64 features (0)
//	offset 8   u16 version (1; 0 means not initialised)
//	offset 10  u16 desc_num: entries of desc[], the queue size
//	offset 12  u16 free_head: first entry of the free list
//	offset 14  u16 old_free_head: free_head as of the last completed update
//	offset 16  u16 used_idx: next used descriptor position
//	offset 18  u16 old_used_idx
//	offset 20  u8  used_wrap_counter
//	offset 21  u8  old_used_wrap_counter
//	offset 22  7 bytes padding
//	offset 32  desc[desc_num], 32 bytes each (DescStatePacked):
//	             offset 0  u8  inflight (head entries: taken, not completed)
//	             offset 1  u8  padding
//	             offset 2  u16 next (free list; a chain's entries in order)
//	             offset 4  u16 last (head entries: the chain's last entry)
//	             offset 6  u16 num (head entries: descriptors in the chain)
//	             offset 8  u64 counter (head entries: order taken)
//	             offset 16 u16 id, offset 18 u16 flags, offset 20 u32 len,
//	             offset 24 u64 addr: the descriptor as the driver wrote it
//
// A queue's region is 32 bytes of header plus the array, rounded up to 64
// bytes. The words the back-end stores pair fields that are stored
// together: free_head|old_free_head, used_idx|old_used_idx, the two wrap
// counters (with two padding bytes), inflight|padding|next, last|num,
// id|flags.
const (
	packedHdrSize    = 32
	packedDescSize   = 32
	packedOffFree    = 12 // u32 word: free_head | old_free_head
	packedOffUsed    = 16 // u32 word: used_idx | old_used_idx
	packedOffWrap    = 20 // u32 word: used_wrap | old_used_wrap | 2 padding
	pdescOffInflight = 0  // u32 word: inflight | padding | next
	pdescOffLast     = 4  // u32 word: last | num
	pdescOffCounter  = 8  // u64
	pdescOffID       = 16 // u32 word: id | flags
	pdescOffLen      = 20 // u32
	pdescOffAddr     = 24 // u64
)

// packedQueueSize is the bytes of one queue's packed region.
func packedQueueSize(queueSize uint16) uint64 {
	n := uint64(packedHdrSize) + packedDescSize*uint64(queueSize)
	return (n + inflightAlign - 1) &^ (inflightAlign - 1)
}

// inflightLayout is the ring layout a region made by GET_INFLIGHT_FD is
// for: QEMU sets the features before it asks (vhost_dev_prepare_inflight),
// so that each queue's region has its layout's size, as vhost-user.rst
// lays them out and another back-end reading the region after us expects;
// a front-end that asks first gets room for either.
type inflightLayout int

const (
	layoutUnknown inflightLayout = iota
	layoutSplit
	layoutPacked
)

// queueSize is the bytes a region gives each queue of queueSize entries.
func (l inflightLayout) queueSize(queueSize uint16) uint64 {
	switch l {
	case layoutSplit:
		return inflightQueueSize(queueSize)
	case layoutPacked:
		return packedQueueSize(queueSize)
	}
	return max(inflightQueueSize(queueSize), packedQueueSize(queueSize))
}

// inflightLayoutLocked is the layout the features set so far call for.
//
// The caller holds s.mu.
func (s *session) inflightLayoutLocked() inflightLayout {
	switch {
	case s.features == 0:
		return layoutUnknown
	case s.features&virtio.FRingPacked != 0:
		return layoutPacked
	}
	return layoutSplit
}

// packedQueue returns a packed tracker for queue i on q, or nil if the
// region describes no queue i; an error when the region, made for split
// rings only, has no room for it.
func (r *inflightRegion) packedQueue(i int, q *virtq.Queue) (*inflightQueue, error) {
	if r == nil || i >= int(r.desc.NumQueues) {
		return nil, nil
	}
	n := packedQueueSize(r.desc.QueueSize)
	stride := r.stride(n)
	if uint64(i)*stride+n > uint64(len(r.data)) {
		return nil, fmt.Errorf("%w: %d bytes, too few for %d packed queues of %d entries", ErrBadInflight, len(r.data), i+1, r.desc.QueueSize)
	}
	b := r.data[uint64(i)*stride : uint64(i)*stride+n]
	size := r.desc.QueueSize
	return &inflightQueue{size: size, pk: &inflightPacked{
		verNum: u32At(b, inflightOffVersion),
		free:   u32At(b, packedOffFree),
		used:   u32At(b, packedOffUsed),
		wrap:   u32At(b, packedOffWrap),
		desc:   b[packedHdrSize : packedHdrSize+packedDescSize*int(size)],
		size:   size,
		q:      q,
		headOf: make([]uint16, size),
	}}, nil
}

// inflightPacked tracks a packed queue. After recovery only the queue's
// worker uses it; the fields after q are its shadows of what it stored.
type inflightPacked struct {
	log                      *logrus.Entry // the session's, for fail; the standard logger if nil
	verNum, free, used, wrap *uint32
	desc                     []byte
	size                     uint16
	q                        *virtq.Queue // the ring: Taken, UsedIdx, DescAvailable

	freeHead, oldFreeHead uint16
	usedPos, oldUsedPos   uint16 // index | wrap<<15, as virtq reports them
	counter               uint64
	headOf                []uint16 // buffer id -> head entry, while in flight
	pending               []uint16 // ids pushed since the last publish
	// failed is set when the free list ran out or pointed outside the
	// array, which only a front-end writing the region can cause:
	// tracking stops rather than write where it should not.
	failed bool
}

func (p *inflightPacked) word(e uint16, off int) *uint32 {
	return u32At(p.desc, int(e)*packedDescSize+off)
}

func (p *inflightPacked) next(e uint16) uint16 {
	_, n := splitHalves(atomic.LoadUint32(p.word(e, pdescOffInflight)))
	return n
}

func (p *inflightPacked) isInflight(e uint16) bool {
	var b [4]byte
	ne.PutUint32(b[:], atomic.LoadUint32(p.word(e, pdescOffInflight)))
	return b[0] != 0
}

// setInflight stores entry e's inflight|padding|next word, next as it is.
// Only the back-end writes the region, so what it loads is its own.
func (p *inflightPacked) setInflight(e uint16, v bool) {
	var b [4]byte
	ne.PutUint32(b[:], atomic.LoadUint32(p.word(e, pdescOffInflight)))
	b[0], b[1] = 0, 0
	if v {
		b[0] = 1
	}
	atomic.StoreUint32(p.word(e, pdescOffInflight), ne.Uint32(b[:]))
}

func (p *inflightPacked) setNext(e, next uint16) {
	lo, _ := splitHalves(atomic.LoadUint32(p.word(e, pdescOffInflight)))
	atomic.StoreUint32(p.word(e, pdescOffInflight), halves(lo, next))
}

func (p *inflightPacked) lastNum(e uint16) (last, num uint16) {
	return splitHalves(atomic.LoadUint32(p.word(e, pdescOffLast)))
}

func (p *inflightPacked) storeHeads() {
	atomic.StoreUint32(p.free, halves(p.freeHead, p.oldFreeHead))
}

// storeUsed stores the wrap counters, then the indices: recovery compares
// (index, wrap) with its old copy, and a batch of a whole ring changes the
// wrap counter alone.
func (p *inflightPacked) storeUsed() {
	var b [4]byte
	b[0] = byte(p.usedPos >> 15)
	b[1] = byte(p.oldUsedPos >> 15)
	atomic.StoreUint32(p.wrap, ne.Uint32(b[:]))
	atomic.StoreUint32(p.used, halves(p.usedPos&0x7fff, p.oldUsedPos&0x7fff))
}

func (p *inflightPacked) loadUsed() (used, oldUsed uint16) {
	var b [4]byte
	ne.PutUint32(b[:], atomic.LoadUint32(p.wrap))
	u, o := splitHalves(atomic.LoadUint32(p.used))
	return u&0x7fff | uint16(b[0]&1)<<15, o&0x7fff | uint16(b[1]&1)<<15
}

// take records the chain Next just took, descriptor by descriptor, as the
// spec's "When receiving available buffers" steps: the head entry is
// old_free_head, the descriptors fill entries from free_head on, and
// old_free_head moves past them last, committing the chain.
func (p *inflightPacked) take(id uint16) {
	descs := p.q.Taken()
	if p.failed || len(descs) == 0 || id >= p.size {
		return
	}
	h := p.oldFreeHead
	for i, d := range descs {
		if p.freeHead >= p.size {
			p.fail("free list exhausted")
			return
		}
		if i == 0 {
			atomic.StoreUint32(p.word(h, pdescOffLast), halves(0, 0))
			atomic.StoreUint64(u64At(p.desc, int(h)*packedDescSize+pdescOffCounter), p.counter)
			p.counter++
			p.setInflight(h, true)
		}
		last, num := p.lastNum(h)
		if i == len(descs)-1 {
			last = p.freeHead
		}
		atomic.StoreUint32(p.word(h, pdescOffLast), halves(last, num+1))
		e := p.freeHead
		atomic.StoreUint64(u64At(p.desc, int(e)*packedDescSize+pdescOffAddr), d.Addr)
		atomic.StoreUint32(p.word(e, pdescOffLen), d.Len)
		atomic.StoreUint32(p.word(e, pdescOffID), halves(d.ID, d.Flags))
		p.freeHead = p.next(e)
		p.storeHeads()
	}
	p.oldFreeHead = p.freeHead
	p.storeHeads()
	p.headOf[id] = h
}

func (p *inflightPacked) fail(why string) {
	p.failed = true
	var lg logrus.FieldLogger = logrus.StandardLogger()
	if p.log != nil {
		lg = p.log
	}
	lg.WithField("reason", why).Error("vhost: packed inflight region inconsistent; no longer tracking this queue")
}

// prePublish returns the pushed chains' entries to the free list and
// stores the new used position, before the used descriptors are
// published: "When supplying used buffers", up to "Update d.flags".
func (p *inflightPacked) prePublish() {
	if p.failed || len(p.pending) == 0 {
		return
	}
	for _, id := range p.pending {
		e := p.headOf[id]
		last, _ := p.lastNum(e)
		if last >= p.size {
			p.fail("chain's last entry outside the array")
			return
		}
		p.setNext(last, p.freeHead)
		p.freeHead = e
	}
	p.storeHeads()
	p.usedPos = p.q.UsedIdx()
	p.storeUsed()
}

// postPublish clears the batch's inflight flags and commits: the old_
// copies take the new values, used_idx's word last, so a crash before it
// is seen as an update to commit (its used descriptor is published).
func (p *inflightPacked) postPublish() {
	if p.failed || len(p.pending) == 0 {
		return
	}
	for _, id := range p.pending {
		p.setInflight(p.headOf[id], false)
	}
	p.oldFreeHead, p.oldUsedPos = p.freeHead, p.usedPos
	p.storeHeads()
	p.storeUsed()
	p.pending = p.pending[:0]
}

// recoverPacked applies the spec's reconnect rules for packed rings and
// registers the chains to resubmit with q. It returns their buffer IDs in
// the order taken and the positions to resume at: used, and last avail =
// used plus the descriptors in flight. A region never initialised is
// initialised instead at q's used position, with nothing in flight, and
// fresh is set: the ring resumes where SET_VRING_BASE said.
func (p *inflightPacked) recoverPacked(num uint32) (ids []uint16, used, lastAvail uint16, fresh bool, err error) {
	if num > uint32(p.size) {
		return nil, 0, 0, false, fmt.Errorf("%w: ring of %d entries, region tracks %d", ErrBadInflight, num, p.size)
	}
	version, descNum := splitHalves(atomic.LoadUint32(p.verNum))
	switch {
	case version == 0:
		for e := range p.size {
			atomic.StoreUint32(p.word(e, pdescOffInflight), halves(0, e+1))
			atomic.StoreUint32(p.word(e, pdescOffLast), 0)
			atomic.StoreUint64(u64At(p.desc, int(e)*packedDescSize+pdescOffCounter), 0)
		}
		p.freeHead, p.oldFreeHead = 0, 0
		p.usedPos = p.q.UsedIdx()
		p.oldUsedPos = p.usedPos
		p.storeHeads()
		p.storeUsed()
		atomic.StoreUint32(p.verNum, halves(inflightVersion, p.size)) // last: the region is valid
		return nil, 0, 0, true, nil
	case version != inflightVersion:
		return nil, 0, 0, false, fmt.Errorf("%w: version %d", ErrBadInflight, version)
	case descNum != p.size:
		return nil, 0, 0, false, fmt.Errorf("%w: desc_num %d, queue size %d", ErrBadInflight, descNum, p.size)
	}
	free, oldFree := splitHalves(atomic.LoadUint32(p.free))
	usedPos, oldUsed := p.loadUsed()
	if usedPos != oldUsed && !p.q.DescAvailable(oldUsed) {
		// The back-end died after publishing the batch and before
		// committing it: commit it now.
		oldFree, oldUsed = free, usedPos
	}
	if oldUsed&0x7fff >= uint16(num) {
		return nil, 0, 0, false, fmt.Errorf("%w: used index %d on a ring of %d", ErrBadInflight, oldUsed&0x7fff, num)
	}
	p.freeHead, p.oldFreeHead, p.usedPos, p.oldUsedPos = oldFree, oldFree, oldUsed, oldUsed
	p.storeHeads()
	p.storeUsed()

	// The free list: not in flight, whatever its entries' flags say.
	inFree := make([]bool, p.size)
	for e, steps := p.freeHead, 0; e < p.size; e, steps = p.next(e), steps+1 {
		if inFree[e] || steps == int(p.size) {
			return nil, 0, 0, false, fmt.Errorf("%w: free list loops at entry %d", ErrBadInflight, e)
		}
		inFree[e] = true
		p.setInflight(e, false)
	}
	type chain struct {
		head    uint16
		counter uint64
		descs   []virtq.Desc
	}
	var chains []chain
	owned := make([]bool, p.size) // entries of a chain found so far
	total := 0
	for h := range p.size {
		if inFree[h] || !p.isInflight(h) {
			continue
		}
		last, n := p.lastNum(h)
		if n == 0 || uint32(n) > num {
			return nil, 0, 0, false, fmt.Errorf("%w: in-flight chain at entry %d of %d descriptors", ErrBadInflight, h, n)
		}
		c := chain{head: h, counter: atomic.LoadUint64(u64At(p.desc, int(h)*packedDescSize+pdescOffCounter))}
		e := h
		for i := range n {
			if e >= p.size || inFree[e] || owned[e] {
				return nil, 0, 0, false, fmt.Errorf("%w: in-flight chain at entry %d runs into entry %d", ErrBadInflight, h, e)
			}
			owned[e] = true
			id, flags := splitHalves(atomic.LoadUint32(p.word(e, pdescOffID)))
			c.descs = append(c.descs, virtq.Desc{
				Addr: atomic.LoadUint64(u64At(p.desc, int(e)*packedDescSize+pdescOffAddr)),
				Len:  atomic.LoadUint32(p.word(e, pdescOffLen)), ID: id, Flags: flags,
			})
			if i == n-1 && e != last {
				return nil, 0, 0, false, fmt.Errorf("%w: in-flight chain at entry %d ends at %d, not its last %d", ErrBadInflight, h, e, last)
			}
			if i < n-1 {
				e = p.next(e)
			}
		}
		if total += int(n); total > int(num) {
			return nil, 0, 0, false, fmt.Errorf("%w: %d descriptors in flight on a ring of %d", ErrBadInflight, total, num)
		}
		chains = append(chains, c)
	}
	sort.Slice(chains, func(i, j int) bool { return chains[i].counter < chains[j].counter })
	p.counter = 0
	avail := oldUsed
	for _, c := range chains {
		id, err := p.q.AddInflight(c.descs)
		if err != nil {
			return nil, 0, 0, false, fmt.Errorf("%w: %w", ErrBadInflight, err)
		}
		p.headOf[id] = c.head
		ids = append(ids, id)
		p.counter = c.counter + 1
		avail = advancePos(avail, uint16(len(c.descs)), uint16(num))
	}
	return ids, oldUsed, avail, false, nil
}

// advancePos moves an index|wrap<<15 position n descriptors on in a ring
// of size (n <= size).
func advancePos(pos, n, size uint16) uint16 {
	i, wrap := uint32(pos&0x7fff)+uint32(n), pos&0x8000
	if i >= uint32(size) {
		i -= uint32(size)
		wrap ^= 0x8000
	}
	return uint16(i) | wrap
}

// inflightStartPackedLocked is inflightStartLocked for a packed ring with
// a region: recover, register the chains to resubmit with q, and resume q
// at the region's used position.
//
// The caller holds s.mu.
func (s *session) inflightStartPackedLocked(vr *vring, q *virtq.Queue, iq *inflightQueue) (*inflightQueue, []uint16, uint16, error) {
	iq.pk.log = s.log.WithField("queue", vr.index)
	ids, used, base, fresh, err := iq.pk.recoverPacked(vr.num)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("queue %d: %w", vr.index, err)
	}
	if fresh {
		return iq, nil, vr.base, nil
	}
	q.SetUsedIdx(used)
	if len(ids) > 0 || base != vr.base || used != vr.usedBase {
		s.log.WithFields(logrus.Fields{"queue": vr.index, "resubmit": len(ids), "used": fmt.Sprintf("%#x", used),
			"vring_base": fmt.Sprintf("%#x", vr.base), "last_avail": fmt.Sprintf("%#x", base)}).Info("vhost: resuming packed queue from the inflight region")
	}
	return iq, ids, base, nil
}
