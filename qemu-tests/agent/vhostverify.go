package main

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// vhostTimeout bounds one request through the socket; TCG is slow, but a
// request that takes this long is a stuck back-end.
const vhostTimeout = 30 * time.Second

// vhostVerify plays QEMU's part against a back-end serving inside the
// guest (nvblk serve on the guest's own pmem): it writes Count sectors of
// Pattern(Seed) from LBA through the vhost-user socket at Path, Chunk
// sectors per request and Workers requests in flight, flushes (when the
// device has a volatile cache to flush), and reads every sector back
// through the socket. With ReadOnly it only reads, to find earlier writes
// after the back-end was restarted. With Name and KillAt it SIGKILLs the
// spawned back-end Name as soon as KillAt of the sectors are acknowledged,
// right after it has sent the next requests, and reports how far the
// acknowledgements went instead of reading back.
func vhostVerify(st agentproto.Step) (agentproto.VerifyData, error) {
	var d agentproto.VerifyData
	ss, chunk, depth := st.SectorSize, max(st.Chunk, 1), max(st.Workers, 1)
	if ss == 0 || ss%512 != 0 || st.Count <= 0 || st.Seed == "" {
		return d, fmt.Errorf("vhost-verify: sector_size %d (a multiple of 512), count %d and a seed needed", ss, st.Count)
	}
	kill := st.Name != ""
	if kill && (st.ReadOnly || st.KillAt <= 0 || st.KillAt >= 1) {
		return d, fmt.Errorf("vhost-verify: a kill needs writes and kill_at in (0, 1), not %v", st.KillAt)
	}
	dev, err := frontend.Connect(st.Path, frontend.Options{NumQueues: 1, MaxIO: chunk * ss})
	if err != nil {
		return d, fmt.Errorf("connect to %s: %w", st.Path, err)
	}
	// After a kill, Close's GET_VRING_BASE meets a closed socket and
	// fails at once; it still frees the memory and eventfds.
	defer dev.Close()
	d.Capacity = dev.Capacity()
	if end := (st.LBA + uint64(st.Count)) * uint64(ss/512); end > d.Capacity {
		return d, fmt.Errorf("sectors up to %d (512-byte) are past the capacity %d", end, d.Capacity)
	}
	q := dev.Queues[0]
	acked := make([]bool, st.Count)
	lbaOf := map[*frontend.Request]uint64{}
	// complete accounts for requests the back-end completed.
	complete := func(rs []*frontend.Request, done func(r *frontend.Request, lba uint64)) error {
		for _, r := range rs {
			lba := lbaOf[r]
			delete(lbaOf, r)
			if r.Status != virtio.BlkSOK {
				return fmt.Errorf("request type %d at lba %d: status %d", r.Type, lba, r.Status)
			}
			done(r, lba)
		}
		return nil
	}
	// Requests cover [LBA, LBA+Count) in chunks; run submits them with
	// depth in flight and hands each completed one to done. When stop
	// says so after a kick, run returns errStop at once, with the
	// requests it just submitted in flight.
	errStop := errors.New("stop")
	run := func(typ uint32, done func(r *frontend.Request, lba uint64), stop func() bool) error {
		next := st.LBA
		end := st.LBA + uint64(st.Count)
		for next < end || q.Inflight() > 0 {
			for next < end && q.Inflight() < depth {
				n := min(uint64(chunk), end-next)
				r := &frontend.Request{Type: typ, Sector: next * uint64(ss/512)}
				if typ == virtio.BlkTOut {
					r.Data = agentproto.Patterns(st.Seed, next, int(n), ss)
				} else {
					r.Data = make([]byte, int(n)*ss)
				}
				if err := q.Submit(r); err != nil {
					return fmt.Errorf("submit at lba %d: %w", next, err)
				}
				lbaOf[r] = next
				next += n
				d.Requests++
				if typ == virtio.BlkTOut {
					d.Submitted = int(next - st.LBA)
				}
			}
			q.Kick()
			if stop != nil && stop() {
				return errStop
			}
			rs, err := q.Wait(vhostTimeout)
			if err != nil {
				return err
			}
			if err := complete(rs, done); err != nil {
				return err
			}
		}
		return nil
	}
	if !st.ReadOnly {
		t0 := time.Now()
		wrote := func(r *frontend.Request, lba uint64) {
			n := len(r.Data) / ss
			d.Written += n
			for i := 0; i < n; i++ {
				acked[lba-st.LBA+uint64(i)] = true
			}
		}
		var stop func() bool
		killAt := int(st.KillAt * float64(st.Count))
		if kill {
			stop = func() bool { return d.Written >= killAt }
		}
		err := run(virtio.BlkTOut, wrote, stop)
		d.WriteMS = time.Since(t0).Milliseconds()
		switch {
		case kill && err == errStop:
			// Killed right after a kick, so that requests are in flight
			// in the back-end; what it completed before it died is
			// acknowledged all the same.
			log, err := killSpawned(st.Name)
			d.Log = log
			if err != nil {
				return d, err
			}
			d.Killed = true
			rs, err := q.Reap()
			if err == nil {
				err = complete(rs, wrote)
			}
			if err != nil {
				return d, fmt.Errorf("completions at the kill: %w", err)
			}
			d.InFlight = q.Inflight()
			for d.AckedPrefix < st.Count && acked[d.AckedPrefix] {
				d.AckedPrefix++
			}
			return d, nil
		case kill && err == nil:
			return d, fmt.Errorf("all %d sectors were acknowledged before the kill at %d", st.Count, killAt)
		case err != nil:
			return d, fmt.Errorf("write: %w", err)
		}
		// A write-through device (nvblk on DAX: each write durable when
		// it completes) offers no FLUSH, and a driver must not send one.
		if dev.Features&virtio.BlkFFlush != 0 {
			if err := q.Do(&frontend.Request{Type: virtio.BlkTFlush}, vhostTimeout); err != nil {
				return d, fmt.Errorf("flush: %w", err)
			}
			d.Flushed = true
		}
		d.WriteMS = time.Since(t0).Milliseconds()
	}
	t0 := time.Now()
	var bad []uint64
	err = run(virtio.BlkTIn, func(r *frontend.Request, lba uint64) {
		for i := 0; i < len(r.Data)/ss; i++ {
			if bytes.Equal(r.Data[i*ss:(i+1)*ss], agentproto.Pattern(st.Seed, lba+uint64(i), ss)) {
				d.Verified++
			} else if len(bad) < 8 {
				bad = append(bad, lba+uint64(i))
			}
		}
	}, nil)
	d.ReadMS = time.Since(t0).Milliseconds()
	if err != nil {
		return d, fmt.Errorf("read back: %w", err)
	}
	if d.Verified != st.Count {
		return d, fmt.Errorf("%d of %d sectors read back differ from their pattern, first at lbas %v",
			st.Count-d.Verified, st.Count, bad)
	}
	return d, nil
}
