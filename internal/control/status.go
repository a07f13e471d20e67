package control

import (
	"time"

	"github.com/nvblk/nvblk/vhost"
)

// Status is the answer to the status command.
type Status struct {
	Time        time.Time     `json:"time"`
	Uptime      time.Duration `json:"uptime"`
	Connected   bool          `json:"connected"`
	Connections uint64        `json:"connections"`
	// Interval is the sampling interval the rates are measured over.
	Interval time.Duration `json:"interval"`
	Queues   []QueueStatus `json:"queues"`
	Total    QueueStatus   `json:"total"`
	// Sessions are the front-ends served now, each with its peer, its
	// features and whether it has a dirty log marked (a migration).
	Sessions []vhost.SessionInfo `json:"sessions,omitempty"`
}

// SessionLister is a Target that tells its front-ends apart: a
// *vhost.Server.
type SessionLister interface {
	Sessions() []vhost.SessionInfo
	DetachSession(id uint64) bool
}

// QueueStatus is one queue (or the total, Index -1): its counters since
// start and its rates over the last interval.
type QueueStatus struct {
	vhost.QueueStats
	IOPS               float64       `json:"iops"`
	ReadBytesPerSec    float64       `json:"read_bytes_per_sec"`
	WriteBytesPerSec   float64       `json:"write_bytes_per_sec"`
	LatencyP50         time.Duration `json:"latency_p50"`
	LatencyP99         time.Duration `json:"latency_p99"`
	IntervalLatencyP50 time.Duration `json:"interval_latency_p50"`
	IntervalLatencyP99 time.Duration `json:"interval_latency_p99"`
}

// Status computes the status of a one-disk server's Target from the live
// counters and the last sample.
func (s *Server) Status() Status { return s.status(s.t) }

func (s *Server) status(t Target) Status {
	now := t.Stats()
	s.mu.Lock()
	var prev, last vhost.Stats
	if p := s.samples[t]; p != nil {
		prev, last = p.prev, p.last
	} else { // added since the last tick: rates from now on
		prev, last = now, now
	}
	s.mu.Unlock()
	// Rates come from the last full interval; before the first tick, from
	// start to now.
	if !last.Time.After(prev.Time) {
		prev, last = last, now
	}
	dt := last.Time.Sub(prev.Time).Seconds()
	st := Status{Time: now.Time, Uptime: now.Time.Sub(s.start), Connected: now.Connected,
		Connections: now.Connections, Interval: last.Time.Sub(prev.Time)}
	for i := range now.Queues {
		var a, b *vhost.QueueStats
		if i < len(prev.Queues) && i < len(last.Queues) {
			a, b = &prev.Queues[i], &last.Queues[i]
		}
		st.Queues = append(st.Queues, queueStatus(now.Queues[i], a, b, dt))
	}
	pt, lt := prev.Total(), last.Total()
	st.Total = queueStatus(now.Total(), &pt, &lt, dt)
	if sl, ok := t.(SessionLister); ok {
		st.Sessions = sl.Sessions()
	}
	return st
}

func queueStatus(q vhost.QueueStats, prev, last *vhost.QueueStats, dt float64) QueueStatus {
	qs := QueueStatus{QueueStats: q, LatencyP50: q.Latency.Quantile(0.5), LatencyP99: q.Latency.Quantile(0.99)}
	if prev == nil || last == nil || dt <= 0 {
		return qs
	}
	qs.IOPS = float64(last.Requests-prev.Requests) / dt
	qs.ReadBytesPerSec = float64(last.BytesRead-prev.BytesRead) / dt
	qs.WriteBytesPerSec = float64(last.BytesWritten-prev.BytesWritten) / dt
	var h vhost.LatencyHistogram
	for i := range h {
		h[i] = last.Latency[i] - prev.Latency[i]
	}
	qs.IntervalLatencyP50, qs.IntervalLatencyP99 = h.Quantile(0.5), h.Quantile(0.99)
	return qs
}
