package vhost

import (
	"github.com/nvblk/nvblk/vhostuser"
	"math/bits"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"
)

// Op is the kind of request a Handler reports in its Outcome.
type Op uint8

// Request kinds counted apart.
const (
	OpRead  Op = iota // data from the device to the guest
	OpWrite           // data from the guest to the device
	OpFlush
	OpOther // anything else: GET_ID, discard, write zeroes, unknown types
	numOps
)

// Status is the class of a completed request's status, as its device
// reports it; the server counts requests by class without knowing the
// device's status values.
type Status uint8

// Status classes.
const (
	StatusOK          Status = iota // the device did what was asked
	StatusIOErr                     // the device failed the request
	StatusUnsupported               // the device does not implement the request
	StatusOther                     // no status was reported, or one outside these
	numStatuses
)

// Outcome is what a Handler did with one chain: the used element's length
// and what the worker counts.
type Outcome struct {
	// Written is the bytes written into the chain's device-writable
	// buffers: the used element's len.
	Written uint32
	Op      Op
	Bytes   uint64 // data bytes moved between guest memory and the device
	Status  Status
}

// LatencyBuckets is the number of log2 buckets of a LatencyHistogram.
const LatencyBuckets = 32

// LatencyHistogram counts request service times (Handler.Handle, from the
// chain taken off the ring to its completion pushed) in log2 buckets:
// bucket 0 holds durations under 1ns, bucket b >= 1 those in
// [2^(b-1), 2^b) ns; the last bucket also holds everything longer.
type LatencyHistogram [LatencyBuckets]uint64

// latencyBucket is the bucket of d.
func latencyBucket(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return min(bits.Len64(uint64(d)), LatencyBuckets-1)
}

// BucketUpper is the exclusive upper bound of bucket b.
func BucketUpper(b int) time.Duration { return time.Duration(1) << b }

// Count is the number of samples.
func (h *LatencyHistogram) Count() uint64 {
	var n uint64
	for _, c := range h {
		n += c
	}
	return n
}

// Quantile returns the upper bound of the bucket holding the q-quantile
// (0 < q <= 1), or 0 without samples: p99 is "99% of requests took less
// than this".
func (h *LatencyHistogram) Quantile(q float64) time.Duration {
	total := h.Count()
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	rank = max(1, min(rank, total))
	var seen uint64
	for b, c := range h {
		seen += c
		if seen >= rank {
			return BucketUpper(b)
		}
	}
	return BucketUpper(LatencyBuckets - 1)
}

// Add adds o's counts to h.
func (h *LatencyHistogram) Add(o *LatencyHistogram) {
	for i := range h {
		h[i] += o[i]
	}
}

// queueCounters are one queue's counters, a session's own (the Server
// adds those of the sessions that ended into its retired totals). Only
// the queue's worker writes a session's, and a session has at most one
// worker per queue at a time (a new one starts after the old one's done
// channel closed), so each update is a plain load and store, not a locked
// read-modify-write; readers (Server.Stats) load atomically. The pads keep
// two queues' workers off each other's cache lines.
type queueCounters struct {
	_ cpu.CacheLinePad
	// ring is the ring's next avail index to take (high 32 bits) and the
	// requests taken off it whose completions are not yet published (low
	// 32), in one word so that taking a chain costs one atomic store.
	ring         atomic.Uint64
	requests     atomic.Uint64
	bytesRead    atomic.Uint64
	bytesWritten atomic.Uint64
	ops          [numOps]atomic.Uint64
	status       [numStatuses]atomic.Uint64
	latency      [LatencyBuckets]atomic.Uint64
	latencySum   atomic.Uint64 // nanoseconds
	_            cpu.CacheLinePad
}

// add adds o's counts (not its ring state) to c: a session's final counts
// to the Server's totals. The caller is c's only writer (Server.mu held)
// and o's workers have stopped.
func (c *queueCounters) add(o *queueCounters) {
	inc(&c.requests, o.requests.Load())
	inc(&c.bytesRead, o.bytesRead.Load())
	inc(&c.bytesWritten, o.bytesWritten.Load())
	inc(&c.latencySum, o.latencySum.Load())
	for i := range c.ops {
		inc(&c.ops[i], o.ops[i].Load())
	}
	for i := range c.status {
		inc(&c.status[i], o.status[i].Load())
	}
	for i := range c.latency {
		inc(&c.latency[i], o.latency[i].Load())
	}
}

// setRing records the ring's next avail index and in-flight count.
func (c *queueCounters) setRing(lastAvail uint16, inFlight uint32) {
	c.ring.Store(uint64(lastAvail)<<32 | uint64(inFlight))
}

func inc(c *atomic.Uint64, n uint64) {
	if n != 0 {
		c.Store(c.Load() + n)
	}
}

// counterBatch is a worker's own tally of the requests it completed since
// it last published, added to its queueCounters in one go at publish time.
// Counting straight into the shared counters cost six atomic stores per
// request, each (XCHG on amd64) waiting for the request's 4 KiB copy to
// drain from the store buffer; now that cost is paid once per batch of up
// to publishBatch requests. Readers see counts at most one batch late.
type counterBatch struct {
	requests, bytesRead, bytesWritten, latencySum uint64
	ops                                           [numOps]uint64
	status                                        [numStatuses]uint64
	latency                                       [LatencyBuckets]uint64
	// buckets marks the latency buckets in use, so flush need not scan all.
	buckets uint32
}

// record counts one completed request. Allocation-free.
func (b *counterBatch) record(o Outcome, d time.Duration) {
	b.requests++
	switch o.Op {
	case OpRead:
		b.bytesRead += o.Bytes
	case OpWrite:
		b.bytesWritten += o.Bytes
	}
	b.ops[min(o.Op, OpOther)]++
	b.status[min(o.Status, StatusOther)]++
	k := latencyBucket(d)
	b.latency[k]++
	b.buckets |= 1 << k
	b.latencySum += uint64(max(d, 0))
}

// flushTo adds the batch to c and empties it. Only the worker that owns
// the batch writes c, so a load and a store per counter suffice.
func (b *counterBatch) flushTo(c *queueCounters) {
	if b.requests == 0 {
		return
	}
	inc(&c.requests, b.requests)
	inc(&c.bytesRead, b.bytesRead)
	inc(&c.bytesWritten, b.bytesWritten)
	inc(&c.latencySum, b.latencySum)
	for i, n := range b.ops {
		inc(&c.ops[i], n)
	}
	for i, n := range b.status {
		inc(&c.status[i], n)
	}
	for m := b.buckets; m != 0; m &= m - 1 {
		k := bits.TrailingZeros32(m)
		inc(&c.latency[k], b.latency[k])
	}
	*b = counterBatch{}
}

// QueueStats is one queue in a Stats snapshot. Counters accumulate over
// the server's life, across front-end connections; in a SessionInfo they
// are that session's alone.
type QueueStats struct {
	Index int `json:"index"`
	// Enabled, Running and Broken describe the ring of the connections
	// being served (all false without one): enabled by the front-end,
	// served by a worker, stopped on a malformed ring until a device
	// reset. With several sessions (Server.Sessions) each is true if it
	// is for one of them; LastAvail is that of the oldest session whose
	// ring runs (else the oldest's), InFlight their sum.
	Enabled bool `json:"enabled"`
	Running bool `json:"running"`
	Broken  bool `json:"broken"`
	// LastAvail is the next avail ring index the device will take.
	LastAvail uint16 `json:"last_avail"`
	// InFlight counts requests taken off the ring whose completions are
	// not yet published in the used ring.
	InFlight     uint32           `json:"in_flight"`
	Requests     uint64           `json:"requests"`
	Reads        uint64           `json:"reads"`
	Writes       uint64           `json:"writes"`
	Flushes      uint64           `json:"flushes"`
	Others       uint64           `json:"others"`
	BytesRead    uint64           `json:"bytes_read"`
	BytesWritten uint64           `json:"bytes_written"`
	OK           uint64           `json:"status_ok"`
	IOErrors     uint64           `json:"status_ioerr"`
	Unsupported  uint64           `json:"status_unsupp"`
	OtherStatus  uint64           `json:"status_other"`
	Latency      LatencyHistogram `json:"latency_log2_ns"`
	LatencySum   time.Duration    `json:"latency_sum_ns"`
}

// Stats is a snapshot of a Server (Server.Stats).
type Stats struct {
	Time time.Time `json:"time"`
	// Connected says whether a front-end is being served; Connections
	// counts those accepted so far. Server.Sessions tells them apart.
	Connected   bool   `json:"connected"`
	Connections uint64 `json:"connections"`
	// Sessions is how many front-ends are being served at once (two
	// while a guest migrates between QEMUs on this host); Logging how
	// many of them have the back-end mark a dirty log.
	Sessions int          `json:"sessions"`
	Logging  int          `json:"dirty_logging_sessions"`
	Queues   []QueueStats `json:"queues"`
}

// Total sums the queues' counters into one QueueStats (Index -1).
func (s *Stats) Total() QueueStats {
	t := QueueStats{Index: -1}
	for i := range s.Queues {
		q := &s.Queues[i]
		t.InFlight += q.InFlight
		t.Requests += q.Requests
		t.Reads += q.Reads
		t.Writes += q.Writes
		t.Flushes += q.Flushes
		t.Others += q.Others
		t.BytesRead += q.BytesRead
		t.BytesWritten += q.BytesWritten
		t.OK += q.OK
		t.IOErrors += q.IOErrors
		t.Unsupported += q.Unsupported
		t.OtherStatus += q.OtherStatus
		t.Latency.Add(&q.Latency)
		t.LatencySum += q.LatencySum
	}
	return t
}

func (c *queueCounters) snapshot(q *QueueStats) {
	r := c.ring.Load()
	q.LastAvail, q.InFlight = uint16(r>>32), uint32(r)
	q.Requests = c.requests.Load()
	q.BytesRead = c.bytesRead.Load()
	q.BytesWritten = c.bytesWritten.Load()
	q.Reads, q.Writes = c.ops[OpRead].Load(), c.ops[OpWrite].Load()
	q.Flushes, q.Others = c.ops[OpFlush].Load(), c.ops[OpOther].Load()
	q.OK, q.IOErrors = c.status[StatusOK].Load(), c.status[StatusIOErr].Load()
	q.Unsupported, q.OtherStatus = c.status[StatusUnsupported].Load(), c.status[StatusOther].Load()
	for i := range c.latency {
		q.Latency[i] = c.latency[i].Load()
	}
	q.LatencySum = time.Duration(c.latencySum.Load())
}

// Stats returns a snapshot of every queue's counters, summed over the
// sessions being served and those that ended, and, while front-ends are
// connected, their rings' state (QueueStats says how several sessions'
// rings are merged). Like Sessions, it never waits for a request.
func (s *Server) Stats() Stats {
	st := Stats{Time: time.Now(), Connections: s.connSeq.Load(), Queues: make([]QueueStats, len(s.retired))}
	s.mu.Lock()
	// Under mu, so that a session that ends meanwhile is counted once:
	// either live here or in retired.
	for i := range s.retired {
		st.Queues[i].Index = i
		s.retired[i].snapshot(&st.Queues[i])
	}
	live := s.liveSessionsLocked()
	sq := make([][]QueueStats, 0, len(live))
	for _, sess := range live {
		qs, ok := sess.queueStats()
		if ok {
			sq = append(sq, qs)
		} else {
			// Going: its counts still go in the totals, not its rings.
			qs = sess.counterStats()
		}
		for i := range st.Queues {
			st.Queues[i].addCounters(&qs[i])
		}
	}
	s.mu.Unlock()
	st.Connected = len(sq) > 0
	st.Sessions = len(sq)
	for _, sess := range live {
		if v := sess.view.Load(); v != nil && v.features&vhostuser.FeatureLogAll != 0 && v.logSize != 0 {
			st.Logging++
		}
	}
	for i := range st.Queues {
		q := &st.Queues[i]
		q.LastAvail, q.InFlight = 0, 0 // no ring without a session
		from := -1                     // the session whose LastAvail is shown
		for k, qs := range sq {
			r := &qs[i]
			q.Enabled, q.Running, q.Broken = q.Enabled || r.Enabled, q.Running || r.Running, q.Broken || r.Broken
			q.InFlight += r.InFlight
			if from < 0 || (r.Running && !sq[from][i].Running) {
				from = k
			}
		}
		if from >= 0 {
			q.LastAvail = sq[from][i].LastAvail
		}
	}
	return st
}

// addCounters adds o's counters (not its ring state) to q.
func (q *QueueStats) addCounters(o *QueueStats) {
	q.Requests += o.Requests
	q.Reads += o.Reads
	q.Writes += o.Writes
	q.Flushes += o.Flushes
	q.Others += o.Others
	q.BytesRead += o.BytesRead
	q.BytesWritten += o.BytesWritten
	q.OK += o.OK
	q.IOErrors += o.IOErrors
	q.Unsupported += o.Unsupported
	q.OtherStatus += o.OtherStatus
	q.Latency.Add(&o.Latency)
	q.LatencySum += o.LatencySum
}

// counterStats returns the session's counters per queue, ring state zero.
func (s *session) counterStats() []QueueStats {
	qs := make([]QueueStats, len(s.counters))
	for i := range s.counters {
		qs[i].Index = i
		s.counters[i].snapshot(&qs[i])
		qs[i].LastAvail, qs[i].InFlight = 0, 0
	}
	return qs
}

// queueStats returns the session's queues: its counters and its rings'
// state. ok is false once the connection is going; the rings are then
// reported stopped. It takes no lock: the view is the one published after
// the last request (publishViewLocked), so a request that waits for a stuck
// guest request does not hold it up.
func (s *session) queueStats() (qs []QueueStats, ok bool) {
	qs = make([]QueueStats, len(s.counters))
	for i := range s.counters {
		qs[i].Index = i
		s.counters[i].snapshot(&qs[i])
	}
	v := s.view.Load()
	if s.closing.Load() || v == nil {
		for i := range qs {
			qs[i].LastAvail, qs[i].InFlight = 0, 0
		}
		return qs, false
	}
	for i, r := range v.rings {
		if i >= len(qs) {
			break
		}
		q := &qs[i]
		q.Enabled, q.Running = r.enabled, r.running
		q.Broken = s.vrings[i].broken.Load()
		if !r.running {
			q.LastAvail, q.InFlight = r.base, 0
		}
	}
	return qs, true
}
