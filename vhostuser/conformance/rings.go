package conformance

import (
	"bytes"
	"fmt"
	"sync"
	"time"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// notificationCases hold the back-end to interrupting the driver for its
// completions, with and without EVENT_IDX.
var notificationCases = []Case{
	{"ring/call-signalled", `virtio 1.2 §2.7.7 "Used Buffer Notification Suppression"`},
	{"ring/event-idx", `virtio 1.2 §2.7.7 "Used Buffer Notification Suppression", §2.7.10 "Available Buffer Notification Suppression"`},
}

// checkNotifications checks that completions raise the call eventfd, with
// and without EVENT_IDX, and that a burst of batched requests completes
// when kicks are suppressed by avail_event.
func checkNotifications(s *suite) {
	for _, eventIdx := range []bool{false, true} {
		name := "ring/call-signalled"
		if eventIdx {
			name = "ring/event-idx"
			if !s.has(virtio.FRingEventIdx) {
				s.record(name, s.notOffered(featureName(virtio.FRingEventIdx)))
				continue
			}
		}
		s.record(name, s.withDev(frontend.Options{EventIdx: eventIdx, QueueSize: 64, MaxIO: 4096}, s.notificationsFinding))
	}
}

// notificationsFinding completes twelve batches of sixteen reads kicked at
// once on queue 0, then one read alone, which must raise the call eventfd.
func (s *suite) notificationsFinding(d *dev) finding {
	q := d.Queues[0]
	total := 0
	for batch := 0; batch < 12; batch++ {
		for i := 0; i < 16; i++ {
			if err := q.Submit(&frontend.Request{Type: virtio.BlkTIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)}); err != nil {
				return errFinding("submit", err)
			}
		}
		q.Kick()
		for q.Inflight() > 0 {
			done, err := q.Wait(s.timeout())
			if err != nil {
				return errFinding(fmt.Sprintf("batch %d", batch), err)
			}
			for _, r := range done {
				if r.Status != virtio.BlkSOK {
					return failf("batch %d: status %s", batch, statusName(r.Status))
				}
			}
			total += len(done)
		}
	}
	// Now strictly: one request, and only the call eventfd is watched.
	d.Queues[0].Ring.WaitCall(0)
	if err := q.Submit(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}); err != nil {
		return errFinding("submit", err)
	}
	q.Kick()
	fired, err := q.Ring.WaitCall(s.timeout())
	if err != nil {
		return errFinding("waiting for the call eventfd", err)
	}
	if !fired {
		return failf("%d batched requests completed, but a single completion raised no interrupt within %v", total, s.timeout())
	}
	if _, err := q.Wait(s.timeout()); err != nil {
		return errFinding("reaping", err)
	}
	return passf("%d requests in batches of 16, then an interrupt for a single one", total+1)
}

// multiqueueCases drive several rings of one device at once.
var multiqueueCases = []Case{
	{"ring/multiqueue", `vhost-user "Multiple queue support"`},
}

func checkMultiqueue(s *suite) {
	const name = "ring/multiqueue"
	switch {
	case !s.protoHas(vhostuser.ProtoMQ):
		s.record(name, s.notOffered("PROTOCOL_F_MQ"))
		return
	case s.queues < 2:
		s.record(name, skipf("not offered: the back-end has %d queue", s.queues))
		return
	}
	nq := min(s.queues, 4)
	// Each queue writes and reads back its own part of the scratch range:
	// two queues writing one sector race each other's read-back.
	span := uint64(scratchBytes/virtio.BlkSectorSize) / uint64(nq) / 8 * 8
	s.record(name, s.withDev(frontend.Options{NumQueues: nq, QueueSize: 32, MaxIO: 4096, Indirect: true, EventIdx: true}, func(d *dev) finding {
		var wg sync.WaitGroup
		errs := make([]error, nq)
		for qi, q := range d.Queues {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 32; i++ {
					sector := uint64(qi*32+i) * 8
					if s.scratchOK {
						sector = s.scratch + uint64(qi)*span + uint64(i)*8%span
						data := pattern(int64(qi*1000+i), 4096)
						if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, s.timeout()); err != nil {
							errs[qi] = err
							return
						}
						got := make([]byte, 4096)
						if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: got}, s.timeout()); err != nil {
							errs[qi] = err
							return
						}
						if !bytes.Equal(got, data) {
							errs[qi] = fmt.Errorf("sector %d read back differs", sector)
							return
						}
						continue
					}
					if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: make([]byte, 4096)}, s.timeout()); err != nil {
						errs[qi] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		for qi, err := range errs {
			if err != nil {
				return failf("queue %d: %v", qi, err)
			}
		}
		return passf("%d queues concurrently", nq)
	}))
}

// stopRingCases stop a ring with requests in flight and start it again,
// as QEMU does around a migration or a device reset.
var stopRingCases = []Case{
	{"ring/get-vring-base-running", `vhost-user "Ring states": stopped by VHOST_USER_GET_VRING_BASE`},
	{"ring/stopped-ring-ignores-kicks", `vhost-user "Ring states": a stopped ring is not processed`},
	{"ring/restart-from-base", frontEndMessage + ": VHOST_USER_SET_VRING_BASE"},
}

// checkStopRing stops a ring with requests in flight (GET_VRING_BASE),
// checks that it stays stopped, and restarts it from the base it gave.
func checkStopRing(s *suite) {
	names := caseNames(stopRingCases)
	s.group(frontend.Options{QueueSize: 256, MaxIO: 4096}, names, func(d *dev) {
		q := d.Queues[0]
		const first, later = 48, 8
		for i := 0; i < first; i++ {
			if err := q.Submit(&frontend.Request{Type: virtio.BlkTIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)}); err != nil {
				s.record(names[0], errFinding("submit", err))
				return
			}
		}
		q.Kick()
		base, err := d.Conn.GetVringBase(0)
		if err != nil {
			for _, n := range names {
				s.record(n, errFinding("GET_VRING_BASE", err))
			}
			return
		}
		// Every request the back-end consumed must be completed by the time
		// it answers (or very soon after): it must not touch the ring later.
		atReply := q.Ring.UsedIdx()
		time.Sleep(200 * time.Millisecond)
		settled := q.Ring.UsedIdx()
		switch {
		case base > first:
			s.record(names[0], failf("base %d, but only %d requests were made available", base, first))
		case settled != uint16(base):
			s.record(names[0], failf("base %d but used idx %d (%d at the reply): consumed requests not completed, or completed after the ring stopped", base, settled, atReply))
		case atReply != settled:
			s.record(names[0], failf("base %d: %d requests completed after GET_VRING_BASE was answered", base, settled-atReply))
		default:
			s.record(names[0], passf("base %d of %d submitted, all consumed completed at the reply", base, first))
		}
		for i := 0; i < later; i++ {
			if err := q.Submit(&frontend.Request{Type: virtio.BlkTIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)}); err != nil {
				s.record(names[1], errFinding("submit", err))
				return
			}
		}
		q.Ring.ForceKick()
		time.Sleep(300 * time.Millisecond)
		if now := q.Ring.UsedIdx(); now != settled {
			s.record(names[1], failf("used idx moved from %d to %d on a stopped ring", settled, now))
		} else {
			s.record(names[1], pass())
		}
		// Restart as QEMU does: NUM, BASE, ADDR, CALL, KICK, ENABLE.
		if err := restartRing(d, q, base); err != nil {
			s.record(names[2], errFinding("restart", err))
			return
		}
		q.Ring.ForceKick()
		deadline := time.Now().Add(s.timeout())
		for q.Inflight() > 0 && time.Now().Before(deadline) {
			done, err := q.Wait(time.Until(deadline))
			if err != nil {
				break
			}
			for _, r := range done {
				if r.Status != virtio.BlkSOK {
					s.record(names[2], failf("status %s after restart", statusName(r.Status)))
					return
				}
			}
		}
		if n := q.Inflight(); n > 0 {
			s.record(names[2], failf("%d requests never completed after restarting from base %d", n, base))
			return
		}
		s.record(names[2], passf("restarted at %d; all %d requests completed", base, first+later))
	})
}

// restartRing sends ENABLE even where PROTOCOL_FEATURES was not
// negotiated, where the frontend's own ring start withholds it: this check
// has always sent the full QEMU sequence, and keeps doing so.
func restartRing(d *dev, q *frontend.Queue, base uint32) error {
	if err := d.SendRing(q, base); err != nil {
		return err
	}
	return d.Conn.SetVringState(vhostuser.ReqSetVringEnable, uint32(q.Index), 1)
}
