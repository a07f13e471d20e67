package conformance

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// packedRing is the chapter of the packed virtqueue layout.
const packedRing = `virtio 1.2 §2.8 "Packed Virtqueues"`

// packedCases run I/O again on packed virtqueues (VIRTIO_F_RING_PACKED),
// when the back-end offers them: the requests of the requests area, a
// small ring driven round many laps with chains that straddle its end,
// indirect tables, EVENT_IDX's descriptor events, and a ring stopped and
// restarted from the base GET_VRING_BASE gave, whose two halves are the
// avail and used positions with their wrap counters.
var packedCases = []Case{
	{"packed/read", packedRing + ": VIRTIO_BLK_T_IN"},
	{"packed/write-read", packedRing + ": VIRTIO_BLK_T_OUT"},
	{"packed/flush", packedRing + ": VIRTIO_BLK_T_FLUSH"},
	{"packed/multi-lap", `virtio 1.2 §2.8.1 "Driver and Device Ring Wrap Counters", §2.8.6 "Next Flag: Descriptor Chaining"`},
	{"packed/indirect", `virtio 1.2 §2.8.7 "Indirect Flag: Scatter-Gather Support"`},
	{"packed/event-idx", `virtio 1.2 §2.8.10 "Driver and Device Event Suppression"`},
	{"packed/restart-from-base", frontEndMessage + ": VHOST_USER_SET_VRING_BASE (packed virtqueue)"},
}

func checkPacked(s *suite) {
	names := caseNames(packedCases)
	if !s.has(virtio.FRingPacked) {
		for _, n := range names {
			s.record(n, s.notOffered(featureName(virtio.FRingPacked)))
		}
		return
	}
	s.group(frontend.Options{Packed: true}, names[:3], func(d *dev) {
		if !d.Queues[0].Ring.Packed() {
			for _, n := range names[:3] {
				s.record(n, failf("offered, but the front-end could not negotiate it (features %#x)", d.Features))
			}
			return
		}
		s.checkPackedRequests(d)
	})
	s.record("packed/multi-lap", s.withPackedDev(frontend.Options{QueueSize: packedLapRing, SegSize: 4096, MaxIO: 3 * 4096},
		s.packedLaps))
	if !s.has(virtio.FRingIndirectDesc) {
		s.record("packed/indirect", s.notOffered(featureName(virtio.FRingIndirectDesc)))
	} else {
		s.record("packed/indirect", s.withPackedDev(frontend.Options{QueueSize: 8, SegSize: 4096, MaxIO: 64 << 10, Indirect: true},
			s.packedIndirect))
	}
	if !s.has(virtio.FRingEventIdx) {
		s.record("packed/event-idx", s.notOffered(featureName(virtio.FRingEventIdx)))
	} else {
		s.record("packed/event-idx", s.withPackedDev(frontend.Options{EventIdx: true, QueueSize: 64, MaxIO: 4096},
			s.notificationsFinding))
	}
	s.record("packed/restart-from-base", s.withPackedDev(frontend.Options{QueueSize: 32, MaxIO: 4096}, s.packedRestart))
}

// withPackedDev is withDev on packed rings.
func (s *suite) withPackedDev(o frontend.Options, fn func(d *dev) finding) finding {
	o.Packed = true
	return s.withDev(o, func(d *dev) finding {
		if !d.Queues[0].Ring.Packed() {
			return failf("offered, but the front-end could not negotiate it (features %#x)", d.Features)
		}
		return fn(d)
	})
}

// checkPackedRequests is the read, write and flush of checkRequests with
// the usual layout, on a packed ring.
func (s *suite) checkPackedRequests(d *dev) {
	n := 16 << 10
	r, err := d.do(readReq(0, n))
	switch {
	case err != nil:
		s.record("packed/read", errFinding("read", err))
	case r.status != virtio.BlkSOK:
		s.record("packed/read", failf("status %s", statusName(r.status)))
	case r.used != uint32(n+1):
		s.record("packed/read", failf("used descriptor's len %d, want %d (data + status)", r.used, n+1))
	default:
		s.record("packed/read", passf("%d bytes at sector 0", n))
	}

	if f, ok := s.needScratch(); !ok {
		s.record("packed/write-read", f)
	} else {
		data := pattern(700, 64<<10)
		if err := d.write(s.scratch, data); err != nil {
			s.record("packed/write-read", errFinding("write", err))
		} else if got, err := d.read(s.scratch, len(data)); err != nil {
			s.record("packed/write-read", errFinding("read back", err))
		} else if !bytes.Equal(got, data) {
			s.record("packed/write-read", failf("read back differs from the data written"))
		} else {
			s.record("packed/write-read", passf("64 KiB at sector %d", s.scratch))
		}
	}

	if !s.has(virtio.BlkFFlush) {
		s.record("packed/flush", s.notOffered("VIRTIO_BLK_F_FLUSH"))
	} else {
		r, err := d.do(rawReq{out: header(virtio.BlkTFlush, 0), inLen: 1})
		s.record("packed/flush", wantStatus(r, err, virtio.BlkSOK))
	}
}

// packedLapRing is the ring multi-lap drives: small, so that a few hundred
// requests go round it dozens of times.
const packedLapRing = 16

// packedLapRequests is how many requests multi-lap makes in each pass.
const packedLapRequests = 240

// packedLaps drives a 16-descriptor packed ring round many laps with
// chains of 3, 4 and 5 descriptors (header, one to three 4 KiB data
// descriptors, status), as many in flight as fit, so that chains start
// at every position and straddle the ring's end in both wrap counters.
// A destructive run writes the scratch range this way, then reads it
// back this way; otherwise a span read once is read again in pieces.
// Every read's data and used length are checked.
func (s *suite) packedLaps(d *dev) finding {
	q := d.Queues[0]
	const span = 64 << 10
	base := uint64(0)
	var model []byte // the span as it is on the disk
	if s.scratchOK {
		base, model = s.scratch, make([]byte, span)
		if err := d.write(base, model); err != nil {
			return errFinding("zeroing the span", err)
		}
	} else {
		var err error
		if model, err = d.read(base, span); err != nil {
			return errFinding("reading the span to compare with", err)
		}
	}
	// Request i covers pages(i) pages at page offset off(i) of the span.
	pages := func(i int) int { return 1 + i%3 }
	offs := make([]int, packedLapRequests)
	for i, o := 0, 0; i < packedLapRequests; i++ {
		if o+pages(i) > span/4096 {
			o = 0
		}
		offs[i] = o
		o += pages(i)
	}
	reqCount, descs := 0, 0
	pass := func(write bool) error {
		reqs := make([]*frontend.Request, packedLapRequests)
		for i := range reqs {
			sector := base + uint64(offs[i]*4096/virtio.BlkSectorSize)
			if write {
				data := pattern(int64(5000+i), pages(i)*4096)
				reqs[i] = &frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}
				// In flight at once are at most five requests of 12 KiB
				// at most, consecutive in the span: they never overlap,
				// so submission order is the order they land in.
				copy(model[offs[i]*4096:], data)
			} else {
				reqs[i] = &frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: make([]byte, pages(i)*4096)}
			}
			reqCount, descs = reqCount+1, descs+2+pages(i)
		}
		return s.runAll(q, reqs, func(i int, r *frontend.Request) error {
			if write {
				return nil
			}
			if r.Written != uint32(len(r.Data)+1) {
				return fmt.Errorf("read %d: used descriptor's len %d, want %d", i, r.Written, len(r.Data)+1)
			}
			if want := model[offs[i]*4096 : offs[i]*4096+len(r.Data)]; !bytes.Equal(r.Data, want) {
				return fmt.Errorf("read %d of %d bytes at sector %d differs from the data there", i, len(r.Data), r.Sector)
			}
			return nil
		})
	}
	if s.scratchOK {
		if err := pass(true); err != nil {
			return errFinding("writing", err)
		}
	}
	if err := pass(false); err != nil {
		return errFinding("reading", err)
	}
	return passf("%d requests, %d descriptors: %d laps of a %d-descriptor ring", reqCount, descs, descs/packedLapRing, packedLapRing)
}

// runAll submits reqs in order on q, keeping as many in flight as fit, and
// calls check with each completed request's index; any status but OK, or
// check's error, stops it.
func (s *suite) runAll(q *frontend.Queue, reqs []*frontend.Request, check func(i int, r *frontend.Request) error) error {
	index := make(map[*frontend.Request]int, len(reqs))
	next := 0
	for next < len(reqs) || q.Inflight() > 0 {
		for next < len(reqs) {
			err := q.Submit(reqs[next])
			if errors.Is(err, frontend.ErrQueueFull) {
				break
			}
			if err != nil {
				return fmt.Errorf("submit %d: %w", next, err)
			}
			index[reqs[next]] = next
			next++
		}
		q.Kick()
		done, err := q.Wait(s.timeout())
		if err != nil {
			return fmt.Errorf("%d of %d submitted, %d in flight: %w", next, len(reqs), q.Inflight(), err)
		}
		for _, r := range done {
			i := index[r]
			if r.Status != virtio.BlkSOK {
				return fmt.Errorf("request %d (type %d, sector %d): status %s", i, r.Type, r.Sector, statusName(r.Status))
			}
			if err := check(i, r); err != nil {
				return err
			}
		}
	}
	return nil
}

// packedIndirect sends 64 KiB requests of 16 data descriptors each as an
// indirect table through an 8-descriptor packed ring, which could not hold
// one of them as a chain: 24 of them, three laps. A destructive run
// writes them to the scratch range first; every read is compared.
func (s *suite) packedIndirect(d *dev) finding {
	q := d.Queues[0]
	const n, size = 24, 64 << 10
	base := uint64(0)
	want := make([][]byte, 4)
	for k := range want {
		if s.scratchOK {
			base, want[k] = s.scratch, pattern(int64(6000+k), size)
			continue
		}
		var err error
		if want[k], err = d.read(base+uint64(k*size/virtio.BlkSectorSize), size); err != nil {
			return errFinding("reading what to compare with", err)
		}
	}
	sector := func(i int) uint64 { return base + uint64(i%4*size/virtio.BlkSectorSize) }
	if s.scratchOK {
		reqs := make([]*frontend.Request, 4)
		for k := range reqs {
			reqs[k] = &frontend.Request{Type: virtio.BlkTOut, Sector: sector(k), Data: want[k]}
		}
		if err := s.runAll(q, reqs, func(int, *frontend.Request) error { return nil }); err != nil {
			return errFinding("writing", err)
		}
	}
	reqs := make([]*frontend.Request, n)
	for i := range reqs {
		reqs[i] = &frontend.Request{Type: virtio.BlkTIn, Sector: sector(i), Data: make([]byte, size)}
	}
	err := s.runAll(q, reqs, func(i int, r *frontend.Request) error {
		if !bytes.Equal(r.Data, want[i%4]) {
			return fmt.Errorf("read %d at sector %d differs from the data there", i, r.Sector)
		}
		return nil
	})
	if err != nil {
		return errFinding("reading", err)
	}
	return passf("%d reads of %d KiB in 16 descriptors through a ring of 8", n, size>>10)
}

// packedRestart completes requests on a packed ring until its positions
// have wrapped, stops it (GET_VRING_BASE), and wants the base to be those
// positions: avail in bits 0-15, used in 16-31, each its index and wrap
// counter in bit 15 (vhost-user "VHOST_USER_GET_VRING_BASE"). The ring
// restarted from that base must carry on where it was, across the next
// wrap.
func (s *suite) packedRestart(d *dev) finding {
	q := d.Queues[0]
	reads := func(n int) []*frontend.Request {
		rs := make([]*frontend.Request, n)
		for i := range rs {
			rs[i] = &frontend.Request{Type: virtio.BlkTIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)}
		}
		return rs
	}
	ok := func(int, *frontend.Request) error { return nil }
	// 20 reads of 3 descriptors: 60 positions of a 32-descriptor ring, on
	// the second lap.
	if err := s.runAll(q, reads(20), ok); err != nil {
		return errFinding("before stopping", err)
	}
	base, err := d.Conn.GetVringBase(0)
	if err != nil {
		return errFinding("GET_VRING_BASE", err)
	}
	// Nothing is in flight: the device's avail and used positions are both
	// where the driver's used position is.
	if want := q.Ring.ResumeBase(); base != want {
		return failf("GET_VRING_BASE = %#x after 20 completed requests of 3 descriptors on a ring of %d, want %#x "+
			"(avail and used position 28 with wrap counter 0)", base, q.Ring.Size, want)
	}
	if err := restartRing(d, q, base); err != nil {
		return errFinding("restart", err)
	}
	if err := s.runAll(q, reads(20), ok); err != nil {
		return errFinding(fmt.Sprintf("after restarting from %#x", base), err)
	}
	return passf("base %#x; 20 more requests completed after restarting from it", base)
}
