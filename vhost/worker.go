package vhost

import (
	"errors"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// publishBatch bounds how many completions wait for one used.idx store and
// interrupt: enough to batch a deep queue, small enough that the driver
// gets completions back, and refills the ring, while the worker goes on
// with the rest. At 32 (a whole QD32 ring) driver and worker took turns
// instead of overlapping; at 8, nvblk bench on two vCPUs, 3 interleaved
// runs each against 32: 4 KiB randread QD32 +15 % (+23 % with
// --poll-us 50), randwrite QD32 +30 % with polling, 128 KiB read QD16
// +20 %, write +10 %; QD1 and two-queue runs unchanged. 4 and 16 did no
// better. (libvhost-user publishes and signals every request.)
const publishBatch = 8

// noKickPoll is how often a ring set up with VringNoFD (no kick eventfd) is
// polled once it is idle.
const noKickPoll = 50 * time.Microsecond

// A hostile or broken guest can post malformed chains as fast as we pop
// them (and a broken kick fd fail as fast as we read it); each is worth a
// warning, but not a log line each.
const (
	logBurst  = 10 // lines per window per queue and kind
	logWindow = time.Second
)

// logLimiter counts one kind of a queue's repeated trouble and rate-limits
// its warnings. Owned by the worker goroutine.
type logLimiter struct {
	total      uint64 // occurrences since the worker started
	windowEnd  time.Time
	logged     int    // lines in the current window
	suppressed uint64 // chains not logged since the last line
}

// note counts one malformed chain and says whether to log it, and how many
// went unlogged before it.
func (l *logLimiter) note(now time.Time) (log bool, suppressed uint64) {
	l.total++
	if now.After(l.windowEnd) {
		l.windowEnd, l.logged = now.Add(logWindow), 0
	}
	if l.logged >= logBurst {
		l.suppressed++
		return false, 0
	}
	l.logged++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// warn counts one occurrence and logs e's message unless the window's lines
// are used up; countField names the running total in the line.
func (l *logLimiter) warn(e *logrus.Entry, countField, msg string) {
	log, suppressed := l.note(time.Now())
	if !log {
		return
	}
	e = e.WithField(countField, l.total)
	if suppressed > 0 {
		e = e.WithField("unlogged", suppressed)
	}
	e.Warn(msg)
}

// worker runs one started, enabled vring on its own goroutine: it is the
// only user of q and h.
type worker struct {
	vr   *vring
	q    *virtq.Queue
	h    Handler
	kick *os.File // borrowed from vr, which outlives the worker; nil = poll
	poll pollWindow
	log  *logrus.Entry
	bad  logLimiter // malformed chains
	// stats are the queue's counters.
	stats *queueCounters
	batch counterBatch // completions not yet added to stats
	// lastEnd is when the previous request's handler returned, if the
	// worker has done nothing slow since (see handle); zero otherwise.
	lastEnd time.Time
	pending uint32 // chains pushed since the last publish
	// track records taken chains in the inflight region (nil without
	// one); resub are chains a dead predecessor took, run first.
	track *inflightQueue
	resub []uint16
	// mem and inflight are the mappings the worker was started on, which
	// the session keeps until it stopped: a fault in them ends the queue.
	mem      *memTable
	inflight *inflightRegion
	// dlog is the dirty log to mark the chains' writable buffers in
	// (log.go), nil when not logging: fixed for the worker's life, since
	// the session stops the worker before it turns logging on or off or
	// replaces the log. unlogged counts writable segments not found in
	// the memory table (none expected), the first logged.
	dlog     *dirtyLog
	unlogged uint64
	kickLog  logLimiter // failed kick reads

	// polls counts the idle spells the worker busy-polled through (or
	// began to), sleeps the times it slept on its kick; asleep is set
	// while it does. Written by the worker, read by tests; each is a
	// plain counter or flag, read with no ordering against anything else.
	polls, sleeps atomic.Uint64
	asleep        atomic.Bool

	stopping atomic.Bool // set by stop, read by the worker
	// closing is the session's: set when its connection is going
	// (Detach), before the session stops its workers; the worker then
	// takes no more chains, so a detached front-end is not served
	// while the session gets there (a polling worker would be).
	closing *atomic.Bool
	done    chan struct{}
}

// startWorker maps the ring at the guest addresses a and starts serving it
// from vr.base.
func startWorker(s *session, vr *vring, a ringAddrs) (*worker, error) {
	cfg := virtq.Config{
		Size:         uint16(vr.num), // SET_VRING_NUM checked 1..32768
		DescAddr:     a.desc,
		AvailAddr:    a.avail,
		UsedAddr:     a.used,
		EventIdx:     s.features&virtio.FRingEventIdx != 0,
		IndirectDesc: s.features&virtio.FRingIndirectDesc != 0,
		Packed:       s.features&virtio.FRingPacked != 0,
	}
	dlog := s.loggingLocked()
	if dlog != nil && vr.addr.Flags&vhostuser.VringFLog != 0 {
		// Only a ring the front-end asked for has its used ring logged,
		// and at the address it gave ("Migration").
		cfg.UsedLog, cfg.UsedLogAddr = dlog, vr.addr.Log
	}
	q, err := virtq.New(s.mem, cfg)
	if err != nil {
		return nil, err
	}
	track, resub, base, err := s.inflightStartLocked(vr, q)
	if err != nil {
		return nil, err
	}
	q.SetLastAvail(base)
	w := &worker{
		vr:   vr,
		q:    q,
		h:    s.srv.be.NewHandler(s.features),
		kick: vr.kick,
		poll: newPollWindow(s.srv.opts.PollDuration),
		log:  s.log.WithField("queue", vr.index),
		done: make(chan struct{}),
	}
	w.track, w.resub = track, resub
	w.closing = &s.closing
	w.mem, w.inflight, w.dlog = s.mem, s.inflight, dlog
	w.stats = &s.counters[vr.index]
	w.stats.setRing(base, 0)
	go w.run()
	return w, nil
}

// ending reports that the worker is to take no more chains.
func (w *worker) ending() bool {
	return w.stopping.Load() || w.closing != nil && w.closing.Load()
}

// stop asks the worker to finish: it completes and publishes the chains it
// already took, then exits. It returns the last avail index.
func (w *worker) stop() uint16 {
	w.stopping.Store(true)
	if w.kick != nil {
		// Set after the flag: a Read already blocked, or about to block,
		// returns at once.
		w.kick.SetReadDeadline(time.Now())
	}
	<-w.done
	if w.kick != nil {
		w.kick.SetReadDeadline(time.Time{})
	}
	return w.q.LastAvail()
}

func (w *worker) run() {
	defer close(w.done)
	if hc, ok := w.h.(handlerCloser); ok {
		// The handler may hold a share of the disk for this queue (a BTT
		// lane): give it back before stop returns, so a restarted queue
		// or the disk's Close does not wait for it.
		defer hc.Close()
	}
	// The goroutine is the worker's alone: the setting dies with it.
	debug.SetPanicOnFault(true)
	defer w.recoverFault()
	c := w.q.NewChain()
	w.resubmit(c)
	for !w.ending() {
		w.q.DisableKicks()
		if !w.drain(c) {
			return
		}
		// The ring is empty and its completions published: the idle
		// spell the poll window learns from starts here.
		var emptyAt time.Time
		if w.poll.adaptive || w.poll.cur > 0 {
			emptyAt = time.Now()
		}
		if w.spin(c, emptyAt) {
			continue
		}
		if w.q.EnableKicks() {
			w.idled(emptyAt)
			continue // work arrived while kicks were off
		}
		w.wait()
		w.idled(emptyAt)
	}
	// The loop also ends right after spin completed a chain, which only
	// drain would have published: publish it, or stop's last avail index
	// would count a request whose completion the driver never sees.
	w.publish()
}

// resubmit runs the chains a predecessor took and never completed, in the
// order it took them, before anything new from the avail ring. They stay
// marked in flight (with their counters) until published.
func (w *worker) resubmit(c *virtq.Chain) {
	if len(w.resub) == 0 {
		return
	}
	for _, head := range w.resub {
		w.taken()
		if err := w.q.ChainAt(head, c); err != nil {
			// Only a driver that rewrote a descriptor it had given us
			// gets here: the head goes back with nothing written.
			w.log.WithError(err).Warn("vhost: completing malformed resubmitted chain with nothing written")
			w.q.Push(head, 0)
		} else {
			w.q.Push(head, w.handle(c))
		}
		w.track.pushed(head)
	}
	w.log.WithField("requests", len(w.resub)).Info("vhost: resubmitted in-flight requests")
	w.resub = nil
	w.publish()
}

// drain processes chains until the ring is empty, publishing in batches.
// It returns false when the ring broke.
func (w *worker) drain(c *virtq.Chain) bool {
	for n := 0; ; n++ {
		got, ok := w.one(c)
		if !ok {
			return false
		}
		if !got || n+1 >= publishBatch || w.ending() {
			w.publish()
			if !got || w.ending() {
				return true
			}
			n = -1
		}
	}
}

// spin busy-polls the ring, empty since emptyAt, for the poll window
// (poll.go) before the worker sleeps, trading a core for the latency of a
// kick and a wakeup. It reports whether it took a chain.
func (w *worker) spin(c *virtq.Chain, emptyAt time.Time) bool {
	window := w.poll.cur
	if window <= 0 {
		return false
	}
	w.polls.Add(1)
	for now := emptyAt; now.Sub(emptyAt) < window && !w.ending(); now = time.Now() {
		got, ok := w.one(c)
		if !ok {
			return false
		}
		if got {
			// Seen at now, before one ran its handler.
			w.poll.idled(now.Sub(emptyAt))
			return true // drain publishes it with the rest
		}
	}
	return false
}

// idled tells the poll window the ring stayed empty from emptyAt until
// now, when the worker goes back to it after the window ran out.
func (w *worker) idled(emptyAt time.Time) {
	if w.poll.adaptive {
		w.poll.idled(time.Since(emptyAt))
	}
}

// one takes and completes a single chain. got reports whether there was
// one; ok is false once the ring is broken.
func (w *worker) one(c *virtq.Chain) (got, ok bool) {
	got, err := w.q.Next(c)
	if got {
		w.track.take(c.Head)
	}
	switch {
	case err == nil && got:
		w.taken()
		w.q.Push(c.Head, w.handle(c))
	case errors.Is(err, virtq.ErrBadChain):
		w.taken()
		w.badChain(c, err)
		w.lastEnd = time.Time{} // it may have logged
	case err != nil:
		w.broke(err)
		return false, false
	}
	if got {
		w.track.pushed(c.Head)
	}
	return got, true
}

// taken counts a chain taken off the ring.
func (w *worker) taken() {
	w.pending++
	w.stats.setRing(w.q.LastAvail(), w.pending)
}

// handle runs the handler on c, counts the request with its latency, and
// returns the bytes it wrote for the used element. The latency starts at
// the end of the request before it when the worker went straight on from
// that one (only ring bookkeeping in between, tens of nanoseconds), else
// now: a request so costs one clock read instead of two; time.Now is two
// vDSO calls, ~4 % of the worker's time at 700 K requests a second.
func (w *worker) handle(c *virtq.Chain) uint32 {
	start := w.lastEnd
	if start.IsZero() {
		start = time.Now()
	}
	o := w.h.Handle(c)
	if w.dlog != nil {
		w.logChain(c)
	}
	w.lastEnd = time.Now()
	w.batch.record(o, w.lastEnd.Sub(start))
	return o.Written
}

// logChain marks every device-writable segment of c in the dirty log: all
// the handler may have written (IN data, status byte, GET_ID's answer),
// whatever it reports having written; marking more is allowed. It runs
// after the handler returned, so after the writes, and before the chain is
// pushed, so before the used.idx that completes it (log.go, "Ordering").
func (w *worker) logChain(c *virtq.Chain) {
	for i := range c.Segments {
		seg := &c.Segments[i]
		if !seg.Writable || len(seg.Buf) == 0 {
			continue
		}
		gpa, ok := w.mem.hostToGuest(seg.Buf)
		if !ok {
			// virtq makes segments from this table only: a bug if seen.
			if w.unlogged++; w.unlogged == 1 {
				w.log.WithField("bytes", len(seg.Buf)).Error("vhost: a writable segment is not in the memory table; not logged")
			}
			continue
		}
		w.dlog.LogWrite(gpa, uint64(len(seg.Buf)))
	}
}

// badChain completes a malformed chain: the handler may still put an error
// status into it, and the queue goes on.
func (w *worker) badChain(c *virtq.Chain, err error) {
	var n uint32
	if bh, ok := w.h.(BadChainHandler); ok {
		n = bh.HandleBadChain(c)
	}
	if w.dlog != nil {
		w.logChain(c)
	}
	w.q.Push(c.Head, n)
	w.bad.warn(w.log.WithError(err).WithField("written", n), "malformed_chains", "vhost: completed a malformed chain")
}

func (w *worker) publish() {
	// Publishing may signal the driver (a syscall), and the worker may
	// sleep after it: the next request's clock starts afresh.
	w.lastEnd = time.Time{}
	w.batch.flushTo(w.stats)
	if w.pending != 0 {
		w.pending = 0
		w.stats.setRing(w.q.LastAvail(), 0)
	}
	w.track.prePublish()
	notify := w.q.Publish()
	w.track.postPublish(w.q.UsedIdx())
	if notify {
		if f := w.vr.call.Load(); f != nil {
			signal(f)
		}
	}
}

// broke stops serving a corrupt ring: the other queues go on, GET_STATUS
// reports DEVICE_NEEDS_RESET and the error eventfd, if any, is signalled.
func (w *worker) broke(err error) {
	w.publish()
	w.markBroken(err)
}

// markBroken makes GET_STATUS report DEVICE_NEEDS_RESET for the queue, logs
// why and signals the error eventfd, if any.
func (w *worker) markBroken(err error) {
	w.vr.broken.Store(true)
	w.log.WithError(err).Error("vhost: queue stopped: device needs reset")
	if f := w.vr.errFD.Load(); f != nil {
		signal(f)
	}
}

// recoverFault ends the queue on a fault in guest memory or the inflight
// region (fault.go): the ring is marked broken as for a corrupt one, and the
// worker returns without touching either mapping again (no publish: the
// used ring may be what faulted), so stop, GET_VRING_BASE and the
// handler's Close still run. Completed requests are counted; those taken
// and not published stay in flight until the device is reset.
func (w *worker) recoverFault() {
	r := recover()
	if r == nil {
		return
	}
	err := sharedFault(r, w.mem, w.inflight, w.dlog)
	w.batch.flushTo(w.stats)
	w.markBroken(err)
}

// wait sleeps until a kick (or, without a kick fd, for one poll interval).
func (w *worker) wait() {
	if w.kick == nil {
		time.Sleep(noKickPoll)
		return
	}
	var buf [8]byte
	w.sleeps.Add(1)
	w.asleep.Store(true)
	_, err := w.kick.Read(buf[:])
	w.asleep.Store(false)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// SET_VRING_KICK takes eventfds only, whose reads do not fail;
		// should one fail anyway, a line per failed read would be one
		// every noKickPoll.
		w.kickLog.warn(w.log.WithError(err), "failed_reads", "vhost: kick eventfd read failed; polling")
		time.Sleep(noKickPoll)
	}
}
