package loadgen

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
	"golang.org/x/sys/unix"
)

// descsPerReq: header, data, status. Each request owns its three
// descriptors for the whole run, so they are written once and a resubmit
// only rewrites the header.
const descsPerReq = 3

// stallTimeout fails a run whose back-end completes nothing for this long.
const stallTimeout = 10 * time.Second

// req is one request slot: its descriptors and guest memory never change.
type req struct {
	hdr, status []byte // in guest memory
	dataGPA     uint64
	write       bool  // direction of the data descriptor as last written
	submitted   int64 // clock() at submission
	inflight    bool
}

// lane drives one queue from one goroutine.
type lane struct {
	ring  *frontend.Ring
	reqs  []req
	clock func() int64
	mode  Mode
	bs    uint64
	// The lane's blocks, in units of bs: random offsets anywhere in
	// [0, total), sequential ones through its stripe [first, first+stripe).
	total, first, stripe, cursor uint64
	rng                          rand.PCG
	spin                         time.Duration

	consumed uint16 // used ring entries popped: our copy of the ring's cursor
	inflight int

	// Set per phase.
	measureFrom, stopAt int64  // clock values
	quota               uint64 // submissions left in this phase; 0 = unlimited
	measure             bool
	hist                Histogram
	lastDone            int64 // clock of the last measured completion

	ops, bytes atomic.Uint64 // measured completions, read by the progress ticker
	// keepGoing is Config.ContinueOnError; errs counts the failed
	// requests of the phase.
	keepGoing bool
	errs      atomic.Uint64
}

func newLane(q *frontend.Queue, mem *frontend.Memory, index int, c *Config, clock func() int64) (*lane, error) {
	l := &lane{ring: q.Ring, clock: clock, mode: c.Mode, bs: uint64(c.BlockSize), spin: c.Spin, keepGoing: c.ContinueOnError}
	l.stripe = c.SizeLimit / l.bs / uint64(c.Queues)
	l.total = l.stripe * uint64(c.Queues) // what Fill covers
	l.first = uint64(index) * l.stripe
	l.rng.Seed(uint64(index)+1, 0x6e76626c6b) // fixed: runs are repeatable
	if int(q.Ring.Size) < descsPerReq*c.IODepth {
		return nil, fmt.Errorf("loadgen: queue %d has %d descriptors for %d requests", index, q.Ring.Size, c.IODepth)
	}
	small, smallBuf, err := mem.Alloc(uint64(32*c.IODepth), 64)
	if err != nil {
		return nil, fmt.Errorf("loadgen: queue %d headers: %w", index, err)
	}
	for i := range c.IODepth {
		gpa, buf, err := mem.Alloc(l.bs, 4096)
		if err != nil {
			return nil, fmt.Errorf("loadgen: queue %d buffers: %w", index, err)
		}
		// Not zeroes: a back-end must not get to skip work on zero pages.
		for j := range buf {
			buf[j] = byte(j*7 + i + index)
		}
		r := req{hdr: smallBuf[32*i : 32*i+16], status: smallBuf[32*i+16 : 32*i+17], dataGPA: gpa}
		head := uint16(descsPerReq * i)
		l.ring.WriteDesc(head, small+uint64(32*i), 16, frontend.DescFNext, head+1)
		l.ring.WriteDesc(head+1, gpa, uint32(l.bs), frontend.DescFNext|frontend.DescFWrite, head+2)
		l.ring.WriteDesc(head+2, small+uint64(32*i+16), 1, frontend.DescFWrite, 0)
		l.reqs = append(l.reqs, r)
	}
	return l, nil
}

// next picks the direction and block of the next request.
func (l *lane) next() (write bool, block uint64) {
	switch l.mode {
	case RandRead:
		return false, l.rng.Uint64() % l.total
	case RandWrite:
		return true, l.rng.Uint64() % l.total
	case RandRW:
		v := l.rng.Uint64()
		return v&1 != 0, (v >> 1) % l.total
	}
	block = l.first + l.cursor
	l.cursor++
	if l.cursor == l.stripe {
		l.cursor = 0
	}
	return l.mode == SeqWrite, block
}

// submit places request i on the avail ring (not kicking) unless the
// phase is over. It reports whether it did.
func (l *lane) submit(i int, now int64) bool {
	if now >= l.stopAt {
		return false
	}
	if l.quota != 0 {
		if l.quota == 1 {
			l.stopAt = 0 // last one: submit nothing after it
		}
		l.quota--
	}
	write, block := l.next()
	r := &l.reqs[i]
	head := uint16(descsPerReq * i)
	if write != r.write {
		fl := uint16(frontend.DescFNext)
		if !write {
			fl |= frontend.DescFWrite
		}
		l.ring.WriteDesc(head+1, r.dataGPA, uint32(l.bs), fl, head+2)
		r.write = write
	}
	typ := uint32(virtio.BlkTIn)
	if write {
		typ = virtio.BlkTOut
	}
	binary.LittleEndian.PutUint32(r.hdr[0:], typ)
	binary.LittleEndian.PutUint64(r.hdr[8:], block*l.bs/virtio.BlkSectorSize)
	r.status[0] = 0xff
	r.submitted, r.inflight = now, true
	l.inflight++
	// PushAvail's index store is atomic: the release for the stores above.
	l.ring.PushAvail(head)
	return true
}

// run fills the queue and keeps it full until the phase ends, then drains.
func (l *lane) run() error {
	now := l.clock()
	for i := range l.reqs {
		if !l.submit(i, now) {
			break
		}
	}
	l.ring.Notify()
	idle := now
	for l.inflight > 0 {
		n, err := l.reap()
		if err != nil {
			return err
		}
		if n > 0 {
			l.ring.Notify()
			idle = l.clock()
			continue
		}
		if err := l.wait(); err != nil {
			return err
		}
		if now := l.clock(); time.Duration(now-idle) > stallTimeout {
			return fmt.Errorf("loadgen: queue stalled: %d requests in flight, none completed in %v", l.inflight, stallTimeout)
		}
	}
	return nil
}

// reap completes every used element, resubmitting each slot at once.
func (l *lane) reap() (int, error) {
	var now int64
	var n, ops, bytes uint64
	for {
		id, _, ok := l.ring.PopUsed()
		if !ok {
			break
		}
		l.consumed++
		if n == 0 {
			now = l.clock() // one clock read per batch: they were all found now
		}
		n++
		i := int(id / descsPerReq)
		if id%descsPerReq != 0 || i >= len(l.reqs) || !l.reqs[i].inflight {
			return 0, fmt.Errorf("loadgen: device completed head %d, which is not in flight", id)
		}
		r := &l.reqs[i]
		if r.status[0] != virtio.BlkSOK && l.keepGoing {
			l.errs.Add(1)
			r.inflight = false
			l.inflight--
			l.submit(i, now)
			continue
		}
		if r.status[0] != virtio.BlkSOK {
			dir := "read"
			if r.write {
				dir = "write"
			}
			return 0, fmt.Errorf("loadgen: %s of %d bytes at sector %d: status %d",
				dir, l.bs, binary.LittleEndian.Uint64(r.hdr[8:]), r.status[0])
		}
		r.inflight = false
		l.inflight--
		if l.measure && now >= l.measureFrom && r.submitted >= l.measureFrom {
			l.hist.Record(uint64(now - r.submitted))
			l.lastDone = now
			ops++
			bytes += l.bs
		}
		l.submit(i, now)
	}
	if ops > 0 {
		l.ops.Add(ops)
		l.bytes.Add(bytes)
	}
	return int(n), nil
}

// wait returns once the used ring moved, after spinning for up to l.spin
// and then sleeping on the call eventfd (for at most 100ms, so stalls are
// noticed). With EVENT_IDX, PopUsed left used_event at our cursor before
// the ring was found empty, so the device signals the next completion.
func (l *lane) wait() error {
	if l.spin > 0 {
		for end := l.clock() + int64(l.spin); l.clock() < end; {
			if l.ring.UsedIdx() != l.consumed {
				return nil
			}
		}
	}
	if l.ring.UsedIdx() != l.consumed {
		return nil
	}
	fds := [1]unix.PollFd{{Fd: int32(l.ring.Call), Events: unix.POLLIN}}
	n, err := unix.Poll(fds[:], 100)
	if err != nil && err != unix.EINTR {
		return fmt.Errorf("loadgen: poll call eventfd: %w", err)
	}
	if n > 0 {
		var buf [8]byte
		unix.Read(l.ring.Call, buf[:])
	}
	return nil
}
