package control

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nvblk/nvblk/vhost"
)

// ContentType is the Prometheus text exposition format's.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// MetricsHandler serves t's counters at any path in the Prometheus text
// format.
func MetricsHandler(t Target) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		WritePrometheus(w, t.Stats())
	})
}

// Defaults of MetricsOptions.
const (
	DefaultMetricsReadTimeout  = 10 * time.Second
	DefaultMetricsWriteTimeout = 10 * time.Second
	// DefaultMetricsIdleTimeout outlasts the usual scrape intervals (15 s
	// to a minute), so a scraper keeps its connection between scrapes.
	DefaultMetricsIdleTimeout = 2 * time.Minute
	// DefaultMetricsMaxConns is plenty for the few scrapers of one
	// backend, and far below the descriptors the process has.
	DefaultMetricsMaxConns = 32
)

// MetricsOptions configure NewMetricsServer; zero fields take the
// defaults.
type MetricsOptions struct {
	// ReadTimeout bounds reading a request, headers and body, from the
	// moment the connection is accepted or the previous reply was sent.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a reply.
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no next
	// request for that long.
	IdleTimeout time.Duration
	// MaxConns caps concurrent connections: one more is closed as soon
	// as it is accepted.
	MaxConns int
}

// NewMetricsServer returns the HTTP server of the metrics endpoint: t's
// counters at /metrics (MetricsHandler), every connection under read,
// write and idle timeouts, and at most o.MaxConns of them at a time, so
// that clients of an endpoint anyone on the network may reach cannot hold
// the process's descriptors. Serve it with its Serve method; its accept
// loop retries temporary errors such as running out of descriptors.
func NewMetricsServer(t Target, o MetricsOptions) *http.Server {
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultMetricsReadTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultMetricsWriteTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultMetricsIdleTimeout
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMetricsMaxConns
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", MetricsHandler(t))
	lim := &connLimit{max: o.MaxConns, admitted: map[net.Conn]struct{}{}}
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: o.ReadTimeout,
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout,
		IdleTimeout:       o.IdleTimeout,
		ConnState:         lim.track,
	}
}

// connLimit caps an http.Server's connections through its ConnState hook,
// which the server calls with StateNew in its accept loop, before it
// serves the connection: one over the cap is closed there, and the server
// then drops it as it would a client that hung up. (A listener that stops
// accepting at the cap, as golang.org/x/net/netutil's does, would leave
// the extra clients waiting in the backlog instead of telling them.)
type connLimit struct {
	max      int
	mu       sync.Mutex // guards admitted
	admitted map[net.Conn]struct{}
}

func (l *connLimit) track(c net.Conn, st http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st {
	case http.StateNew:
		if len(l.admitted) >= l.max {
			c.Close()
			return
		}
		l.admitted[c] = struct{}{}
	case http.StateHijacked, http.StateClosed:
		delete(l.admitted, c)
	}
}

// WritePrometheus writes st in the Prometheus text exposition format: one
// family per counter, labelled by queue, with latency as a histogram in
// seconds whose buckets are the log2 ones.
func WritePrometheus(w io.Writer, st vhost.Stats) error {
	b := bufio.NewWriter(w)
	family := func(name, typ, help string) {
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	sample := func(name string, labels string, v float64) {
		if labels != "" {
			labels = "{" + labels + "}"
		}
		fmt.Fprintf(b, "%s%s %s\n", name, labels, strconv.FormatFloat(v, 'g', -1, 64))
	}
	bit := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	qlabel := func(q *vhost.QueueStats) string { return fmt.Sprintf(`queue="%d"`, q.Index) }

	family("nvblk_frontend_connected", "gauge", "Whether a vhost-user front-end is connected.")
	sample("nvblk_frontend_connected", "", bit(st.Connected))
	family("nvblk_frontend_connections_total", "counter", "vhost-user front-end connections accepted.")
	sample("nvblk_frontend_connections_total", "", float64(st.Connections))

	gauges := []struct {
		name, help string
		v          func(q *vhost.QueueStats) float64
	}{
		{"nvblk_queue_enabled", "Whether the front-end enabled the queue.", func(q *vhost.QueueStats) float64 { return bit(q.Enabled) }},
		{"nvblk_queue_running", "Whether a worker serves the queue.", func(q *vhost.QueueStats) float64 { return bit(q.Running) }},
		{"nvblk_queue_broken", "Whether the queue stopped on a malformed ring (device needs reset).", func(q *vhost.QueueStats) float64 { return bit(q.Broken) }},
		{"nvblk_queue_in_flight", "Requests taken off the ring whose completion is not yet published.", func(q *vhost.QueueStats) float64 { return float64(q.InFlight) }},
		{"nvblk_queue_last_avail", "The next avail ring index the queue will take.", func(q *vhost.QueueStats) float64 { return float64(q.LastAvail) }},
	}
	for _, g := range gauges {
		family(g.name, "gauge", g.help)
		for i := range st.Queues {
			sample(g.name, qlabel(&st.Queues[i]), g.v(&st.Queues[i]))
		}
	}

	family("nvblk_requests_total", "counter", "Requests completed, by queue and operation.")
	for i := range st.Queues {
		q := &st.Queues[i]
		for _, op := range []struct {
			name string
			n    uint64
		}{{"read", q.Reads}, {"write", q.Writes}, {"flush", q.Flushes}, {"other", q.Others}} {
			sample("nvblk_requests_total", fmt.Sprintf(`%s,op="%s"`, qlabel(q), op.name), float64(op.n))
		}
	}
	family("nvblk_request_status_total", "counter", "Requests completed, by queue and virtio-blk status.")
	for i := range st.Queues {
		q := &st.Queues[i]
		for _, s := range []struct {
			name string
			n    uint64
		}{{"ok", q.OK}, {"ioerr", q.IOErrors}, {"unsupp", q.Unsupported}, {"other", q.OtherStatus}} {
			sample("nvblk_request_status_total", fmt.Sprintf(`%s,status="%s"`, qlabel(q), s.name), float64(s.n))
		}
	}
	family("nvblk_bytes_total", "counter", "Data bytes moved, by queue and direction (read: to the guest).")
	for i := range st.Queues {
		q := &st.Queues[i]
		sample("nvblk_bytes_total", qlabel(q)+`,direction="read"`, float64(q.BytesRead))
		sample("nvblk_bytes_total", qlabel(q)+`,direction="write"`, float64(q.BytesWritten))
	}
	family("nvblk_request_duration_seconds", "histogram", "Request service time (taken off the ring to completed), by queue.")
	for i := range st.Queues {
		q := &st.Queues[i]
		var cum uint64
		for bk := 0; bk < vhost.LatencyBuckets-1; bk++ {
			cum += q.Latency[bk]
			le := strconv.FormatFloat(vhost.BucketUpper(bk).Seconds(), 'g', -1, 64)
			sample("nvblk_request_duration_seconds_bucket", fmt.Sprintf(`%s,le="%s"`, qlabel(q), le), float64(cum))
		}
		cum += q.Latency[vhost.LatencyBuckets-1]
		sample("nvblk_request_duration_seconds_bucket", qlabel(q)+`,le="+Inf"`, float64(cum))
		sample("nvblk_request_duration_seconds_sum", qlabel(q), q.LatencySum.Seconds())
		sample("nvblk_request_duration_seconds_count", qlabel(q), float64(cum))
	}
	return b.Flush()
}
