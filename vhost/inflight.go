package vhost

// Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), split
// virtqueues: QEMU docs/interop/vhost-user.rst, "Inflight I/O tracking".
// Packed virtqueues have their own layout and rules (inflight_packed.go);
// a region is allocated with room for either, as QEMU asks for it before
// it sets the features that say which ring the guest drives.
//
// The back-end allocates a shared memory region (GET_INFLIGHT_FD) in which
// it records, per queue, which descriptor chains it has taken from the
// avail ring and not yet completed. QEMU keeps the region (it holds the fd)
// across our death and hands it to the next back-end process
// (SET_INFLIGHT_FD), which resubmits those chains before serving new avail
// entries. So a guest request taken by a back-end that was then killed is
// neither lost nor failed: it is done again by the next one.
//
// Every byte offset of the region is in this file; inflight_test.go pins
// them. All fields are in host byte order. Who writes what: only the
// back-end writes the region (the session when it initialises or recovers
// a queue, the queue's worker while it runs); QEMU only keeps it. Stores
// that recovery after a crash relies on are sync/atomic stores in the order
// the spec gives: a store that retired is in the shared memory when the
// process dies, and atomics keep the compiler from reordering them.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/virtq"
)

// ErrBadInflight reports an inflight region or description we cannot use.
var ErrBadInflight = errors.New("vhost: bad inflight region")

// Layout of one queue's region (QueueRegionSplit):
//
//	offset 0   u64 features (0)
//	offset 8   u16 version (1; 0 means not initialised)
//	offset 10  u16 desc_num: entries of desc[], the queue size
//	offset 12  u16 last_batch_head: head of the list of the last used batch
//	offset 14  u16 used_idx: used.idx as of the last completed batch
//	offset 16  desc[desc_num], 16 bytes each (DescStateSplit):
//	             offset 0  u8  inflight (1: taken, not completed)
//	             offset 1  5 bytes padding
//	             offset 6  u16 next (the last batch's list)
//	             offset 8  u64 counter (order in which heads were taken)
//
// Queue i's region starts at i*inflightQueueSize(queue size): 16 bytes of
// header plus the array, rounded up to 64 bytes (what libvhost-user uses,
// so a region stays meaningful to either back-end).
const (
	inflightVersion     = 1
	inflightAlign       = 64
	inflightHdrSize     = 16
	inflightDescSize    = 16
	inflightOffFeatures = 0
	inflightOffVersion  = 8  // u32 word: version | desc_num
	inflightOffBatch    = 12 // u32 word: last_batch_head | used_idx
	descOffInflight     = 0  // u32 word: inflight | 3 bytes padding
	descOffNext         = 4  // u32 word: 2 bytes padding | next
	descOffCounter      = 8  // u64
)

var ne = binary.NativeEndian

// inflightQueueSize is the bytes of one queue's region.
func inflightQueueSize(queueSize uint16) uint64 {
	n := uint64(inflightHdrSize) + inflightDescSize*uint64(queueSize)
	return (n + inflightAlign - 1) &^ (inflightAlign - 1)
}

// halves packs two native-order u16 fields that share an aligned word.
func halves(lo, hi uint16) uint32 {
	var b [4]byte
	ne.PutUint16(b[0:], lo)
	ne.PutUint16(b[2:], hi)
	return ne.Uint32(b[:])
}

// splitHalves is the inverse of halves.
func splitHalves(w uint32) (lo, hi uint16) {
	var b [4]byte
	ne.PutUint32(b[:], w)
	return ne.Uint16(b[0:]), ne.Uint16(b[2:])
}

// inflightRegion is a mapped inflight region. The session owns it (it is
// unmapped once, when replaced or when the connection ends, after every
// worker stopped); its fd is closed as soon as it is mapped.
type inflightRegion struct {
	desc    vhostuser.Inflight
	mapping []byte // the whole mmap, for munmap
	// data is all MmapSize bytes: NumQueues regions of
	// inflightQueueSize(QueueSize) for split rings, of
	// packedQueueSize(QueueSize) for packed ones where there is room.
	data []byte
}

// checkInflight validates the queue geometry of a description.
func checkInflight(inf vhostuser.Inflight) error {
	if inf.NumQueues == 0 || inf.QueueSize == 0 || uint32(inf.QueueSize) > virtq.MaxSize {
		return fmt.Errorf("%w: %d queues of %d entries", ErrBadInflight, inf.NumQueues, inf.QueueSize)
	}
	return nil
}

// newInflightRegion allocates a zeroed region for GET_INFLIGHT_FD. It
// returns the region, mapped, and the memfd to send; the caller owns fd.
func newInflightRegion(numQueues, queueSize uint16, layout inflightLayout) (*inflightRegion, int, error) {
	inf := vhostuser.Inflight{NumQueues: numQueues, QueueSize: queueSize}
	if err := checkInflight(inf); err != nil {
		return nil, -1, err
	}
	inf.MmapSize = uint64(numQueues) * layout.queueSize(queueSize)
	fd, err := newMemfd(inf.MmapSize)
	if err != nil {
		return nil, -1, fmt.Errorf("inflight region: %w", err)
	}
	r, err := mapInflightRegion(inf, fd)
	if err != nil {
		unix.Close(fd)
		return nil, -1, err
	}
	return r, fd, nil
}

// mapInflightRegion maps the region inf describes in fd (SET_INFLIGHT_FD).
// fd stays the caller's.
func mapInflightRegion(inf vhostuser.Inflight, fd int) (*inflightRegion, error) {
	if err := checkInflight(inf); err != nil {
		return nil, err
	}
	need := uint64(inf.NumQueues) * inflightQueueSize(inf.QueueSize)
	if inf.MmapSize < need {
		return nil, fmt.Errorf("%w: %d bytes for %d queues of %d entries, want %d", ErrBadInflight, inf.MmapSize, inf.NumQueues, inf.QueueSize, need)
	}
	if inf.MmapOffset%8 != 0 {
		return nil, fmt.Errorf("%w: mmap offset %#x not 8-aligned", ErrBadInflight, inf.MmapOffset)
	}
	mapping, data, err := mapRegionFD(fd, inf.MmapOffset, inf.MmapSize)
	if err != nil {
		return nil, fmt.Errorf("inflight region: %w", err)
	}
	if !aligned8(data) {
		unmapRegion(mapping)
		return nil, fmt.Errorf("%w: region not 8-aligned in memory", ErrBadInflight)
	}
	// All of it: a packed ring's layout (inflight_packed.go) is larger
	// than need, the split one's.
	return &inflightRegion{desc: inf, mapping: mapping, data: data[:inf.MmapSize:inf.MmapSize]}, nil
}

func (r *inflightRegion) unmap() error {
	err := unmapRegion(r.mapping)
	r.mapping, r.data = nil, nil
	return err
}

// stride is how far apart the queues' regions are: the region's size
// shared out among its queues, as its creator laid them out (one queue's
// layout, n bytes, or more when the region was made before the front-end
// said which ring layout it uses), n at least.
func (r *inflightRegion) stride(n uint64) uint64 {
	return max(n, r.desc.MmapSize/uint64(r.desc.NumQueues))
}

// queue returns a tracker for queue i, or nil if the region has no room
// for it (QEMU describes exactly the queues it uses).
func (r *inflightRegion) queue(i int) *inflightQueue {
	if r == nil || i >= int(r.desc.NumQueues) {
		return nil
	}
	n := inflightQueueSize(r.desc.QueueSize)
	stride := r.stride(n)
	b := r.data[uint64(i)*stride : uint64(i)*stride+n]
	return &inflightQueue{
		verNum: u32At(b, inflightOffVersion),
		batch:  u32At(b, inflightOffBatch),
		desc:   b[inflightHdrSize : inflightHdrSize+inflightDescSize*int(r.desc.QueueSize)],
		size:   r.desc.QueueSize,
	}
}

// inflightQueue tracks one queue in its region. After the session created
// it and ran recover, only the queue's worker uses it; the shadows below
// are its own copies of what it last stored.
type inflightQueue struct {
	verNum *uint32 // version | desc_num
	batch  *uint32 // last_batch_head | used_idx
	desc   []byte
	size   uint16 // desc_num

	counter       uint64   // next counter value to hand out
	lastBatchHead uint16   // shadow of last_batch_head
	usedIdx       uint16   // shadow of used_idx
	pending       []uint16 // heads pushed since the last publish

	// pk, when set, tracks a packed ring in the packed layout instead
	// (inflight_packed.go); the fields above are then unused.
	pk *inflightPacked
}

func (iq *inflightQueue) inflightWord(head uint16) *uint32 {
	return u32At(iq.desc, int(head)*inflightDescSize+descOffInflight)
}

func (iq *inflightQueue) nextWord(head uint16) *uint32 {
	return u32At(iq.desc, int(head)*inflightDescSize+descOffNext)
}

func (iq *inflightQueue) counterWord(head uint16) *uint64 {
	return u64At(iq.desc, int(head)*inflightDescSize+descOffCounter)
}

// isInflight reads desc[head].inflight.
func (iq *inflightQueue) isInflight(head uint16) bool {
	var b [4]byte
	ne.PutUint32(b[:], atomic.LoadUint32(iq.inflightWord(head)))
	return b[0] != 0
}

// setInflight stores desc[head].inflight (and its padding, which is ours).
func (iq *inflightQueue) setInflight(head uint16, v bool) {
	var b [4]byte
	if v {
		b[0] = 1
	}
	atomic.StoreUint32(iq.inflightWord(head), ne.Uint32(b[:]))
}

func (iq *inflightQueue) next(head uint16) uint16 {
	_, n := splitHalves(atomic.LoadUint32(iq.nextWord(head)))
	return n
}

// recoverRing applies the spec's reconnect rules to a ring of num entries
// whose used ring holds used as its idx, and returns the heads to resubmit
// in the order they were taken. A region never initialised (version 0: a
// fresh GET_INFLIGHT_FD) is initialised instead, with nothing in flight.
//
// The caller (the session, before the worker starts) then resumes the ring
// at used+len(heads): every avail entry before it was either completed
// (it is in the used ring) or is in flight.
func (iq *inflightQueue) recoverRing(used uint16, num uint32) ([]uint16, error) {
	if num > uint32(iq.size) {
		return nil, fmt.Errorf("%w: ring of %d entries, region tracks %d", ErrBadInflight, num, iq.size)
	}
	version, descNum := splitHalves(atomic.LoadUint32(iq.verNum))
	switch {
	case version == 0:
		for h := range iq.size {
			iq.setInflight(h, false)
			atomic.StoreUint32(iq.nextWord(h), 0)
			atomic.StoreUint64(iq.counterWord(h), 0)
		}
		iq.lastBatchHead, iq.usedIdx = 0, used
		atomic.StoreUint32(iq.batch, halves(0, used))
		atomic.StoreUint32(iq.verNum, halves(inflightVersion, iq.size)) // last: the region is valid
		return nil, nil
	case version != inflightVersion:
		return nil, fmt.Errorf("%w: version %d", ErrBadInflight, version)
	case descNum != iq.size:
		return nil, fmt.Errorf("%w: desc_num %d, queue size %d", ErrBadInflight, descNum, iq.size)
	}
	lastBatchHead, regionUsed := splitHalves(atomic.LoadUint32(iq.batch))
	if regionUsed != used {
		// The back-end died after storing used.idx and before clearing
		// the batch's inflight flags: the batch was completed.
		n := used - regionUsed
		if n > iq.size {
			return nil, fmt.Errorf("%w: used idx %d is %d past the region's %d", ErrBadInflight, used, n, regionUsed)
		}
		h := lastBatchHead
		for range n {
			if h >= iq.size {
				return nil, fmt.Errorf("%w: last batch list reaches head %d", ErrBadInflight, h)
			}
			iq.setInflight(h, false)
			h = iq.next(h)
		}
	}
	iq.lastBatchHead, iq.usedIdx = lastBatchHead, used
	atomic.StoreUint32(iq.batch, halves(lastBatchHead, used))

	type taken struct {
		head    uint16
		counter uint64
	}
	var list []taken
	for h := range iq.size {
		if !iq.isInflight(h) {
			continue
		}
		if uint32(h) >= num {
			return nil, fmt.Errorf("%w: head %d in flight on a ring of %d entries", ErrBadInflight, h, num)
		}
		list = append(list, taken{h, atomic.LoadUint64(iq.counterWord(h))})
	}
	if len(list) > int(num) {
		return nil, fmt.Errorf("%w: %d heads in flight on a ring of %d entries", ErrBadInflight, len(list), num)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].counter < list[j].counter })
	heads := make([]uint16, len(list))
	iq.counter = 0
	for i, e := range list {
		heads[i] = e.head
		iq.counter = e.counter + 1
	}
	return heads, nil
}

// take records head as taken from the avail ring, before any of its side
// effects: counter first, then the flag that makes it count (release).
func (iq *inflightQueue) take(head uint16) {
	if iq == nil {
		return
	}
	if iq.pk != nil {
		iq.pk.take(head)
		return
	}
	atomic.StoreUint64(iq.counterWord(head), iq.counter)
	iq.counter++
	iq.setInflight(head, true)
}

// pushed notes that head's used element was written (not yet published).
func (iq *inflightQueue) pushed(head uint16) {
	if iq == nil {
		return
	}
	if iq.pk != nil {
		iq.pk.pending = append(iq.pk.pending, head)
		return
	}
	iq.pending = append(iq.pending, head)
}

// prePublish links the pending heads into the last-batch list, before
// used.idx is stored: recovery walks it if we die between the two.
func (iq *inflightQueue) prePublish() {
	if iq != nil && iq.pk != nil {
		iq.pk.prePublish()
		return
	}
	if iq == nil || len(iq.pending) == 0 {
		return
	}
	for _, h := range iq.pending {
		atomic.StoreUint32(iq.nextWord(h), halves(0, iq.lastBatchHead))
		iq.lastBatchHead = h
	}
	atomic.StoreUint32(iq.batch, halves(iq.lastBatchHead, iq.usedIdx))
}

// postPublish runs after used.idx was stored as used: the batch is no
// longer in flight, and used_idx says so last.
func (iq *inflightQueue) postPublish(used uint16) {
	if iq != nil && iq.pk != nil {
		iq.pk.postPublish()
		return
	}
	if iq == nil || len(iq.pending) == 0 {
		return
	}
	for _, h := range iq.pending {
		iq.setInflight(h, false)
	}
	iq.usedIdx = used
	atomic.StoreUint32(iq.batch, halves(iq.lastBatchHead, used))
	iq.pending = iq.pending[:0]
}

// inflightStartLocked prepares inflight tracking for vr's new worker on q:
// with a region, it recovers the queue's records and returns the tracker,
// the heads to resubmit and where to resume the avail ring (the used index
// plus the heads in flight, whatever SET_VRING_BASE said: QEMU can only
// send the used index after our death). Without one it returns vr.base.
//
// The caller holds s.mu.
//
// A packed ring takes its used position from SET_VRING_BASE's high half,
// or from the region (inflight_packed.go), which QEMU cannot know after
// our death either.
func (s *session) inflightStartLocked(vr *vring, q *virtq.Queue) (*inflightQueue, []uint16, uint16, error) {
	if q.Packed() {
		q.SetUsedIdx(vr.usedBase)
		iq, err := s.inflight.packedQueue(vr.index, q)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("queue %d: %w", vr.index, err)
		}
		if iq == nil {
			return nil, nil, vr.base, nil
		}
		return s.inflightStartPackedLocked(vr, q, iq)
	}
	iq := s.inflight.queue(vr.index)
	if iq == nil {
		return nil, nil, vr.base, nil
	}
	used := q.UsedIdx()
	heads, err := iq.recoverRing(used, vr.num)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("queue %d: %w", vr.index, err)
	}
	base := used + uint16(len(heads))
	if len(heads) > 0 || base != vr.base {
		s.log.WithFields(logrus.Fields{"queue": vr.index, "resubmit": len(heads), "used_idx": used,
			"vring_base": vr.base, "last_avail": base}).Info("vhost: resuming queue from the inflight region")
	}
	return iq, heads, base, nil
}

// setInflightLocked installs r as the session's region, stopping the
// workers around the swap (they hold trackers into the old one).
//
// The caller holds s.mu.
func (s *session) setInflightLocked(r *inflightRegion) error {
	running := s.stopAllLocked()
	old := s.inflight
	s.inflight = r
	if old != nil {
		if err := old.unmap(); err != nil {
			s.log.WithError(err).Warn("vhost: munmap inflight region")
		}
	}
	return s.startLocked(running)
}

// getInflightFDLocked answers GET_INFLIGHT_FD with a new zeroed region and
// its memfd, and starts tracking in it. The memfd is ours until sent; the
// mapping is the session's. A region we cannot make is answered with
// mmap_size 0 and no fd, which QEMU takes as "no inflight tracking".
//
// The caller holds s.mu.
func (s *session) getInflightFDLocked(inf vhostuser.Inflight) error {
	r, fd, err := newInflightRegion(inf.NumQueues, inf.QueueSize, s.inflightLayoutLocked())
	if err != nil {
		s.log.WithError(err).Error("vhost: GET_INFLIGHT_FD: no inflight tracking")
		return s.replyLocked(vhostuser.ReqGetInflightFD, vhostuser.Inflight{}.Encode())
	}
	defer unix.Close(fd)
	if err := s.setInflightLocked(r); err != nil {
		s.log.WithError(err).Error("vhost: restarting queues on the new inflight region")
	}
	if err := vhostuser.WriteMessage(s.conn, vhostuser.EncodeMessage(vhostuser.ReqGetInflightFD, vhostuser.ReplyFlags, r.desc.Encode()), []int{fd}); err != nil {
		return fmt.Errorf("vhost: reply to %v: %w", vhostuser.ReqGetInflightFD, err)
	}
	s.log.WithFields(logrus.Fields{"queues": inf.NumQueues, "queue_size": inf.QueueSize, "bytes": r.desc.MmapSize}).
		Debug("vhost: inflight region allocated")
	return nil
}

// setInflightFDLocked maps the region QEMU hands back (SET_INFLIGHT_FD:
// after every GET_INFLIGHT_FD, and to a new back-end after a reconnect).
// It owns fd and closes it: the mapping keeps the memory.
//
// The caller holds s.mu.
func (s *session) setInflightFDLocked(inf vhostuser.Inflight, fd int) error {
	defer unix.Close(fd)
	r, err := mapInflightRegion(inf, fd)
	if err != nil {
		return err
	}
	return s.setInflightLocked(r)
}
