package control

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
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

// DisksMetricsHandler serves the counters of every disk of d, each sample
// labelled disk="NAME".
func DisksMetricsHandler(d Disks) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		disks := d.List()
		all := make([]labelledStats, len(disks))
		for i, dk := range disks {
			all[i] = labelledStats{label: diskLabel(dk.Info.Name), st: dk.Target.Stats()}
		}
		writePrometheus(w, all)
	})
}

// diskLabel is the disk="NAME" label, NAME escaped as the exposition format
// wants (names the CLI accepts need none; the control socket's caller may
// not be the CLI).
func diskLabel(name string) string {
	return `disk="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(name) + `"`
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
	return newMetricsServer(MetricsHandler(t), o)
}

// NewDisksMetricsServer is NewMetricsServer for every disk of d
// (DisksMetricsHandler).
func NewDisksMetricsServer(d Disks, o MetricsOptions) *http.Server {
	return newMetricsServer(DisksMetricsHandler(d), o)
}

func newMetricsServer(h http.Handler, o MetricsOptions) *http.Server {
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
	mux.Handle("/metrics", h)
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
	return writePrometheus(w, []labelledStats{{st: st}})
}

// labelledStats are one disk's counters and the label its samples carry
// ("" for none).
type labelledStats struct {
	label string
	st    vhost.Stats
}

// writePrometheus writes the counters of every disk of all, family by
// family: the format wants a family's samples together.
func writePrometheus(w io.Writer, all []labelledStats) error {
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
	// eachQueue calls f for every queue of every disk with the queue's
	// labels: the disk's, then queue="N".
	eachQueue := func(f func(labels string, q *vhost.QueueStats)) {
		for _, ls := range all {
			for i := range ls.st.Queues {
				q := &ls.st.Queues[i]
				l := fmt.Sprintf(`queue="%d"`, q.Index)
				if ls.label != "" {
					l = ls.label + "," + l
				}
				f(l, q)
			}
		}
	}

	family("nvblk_frontend_connected", "gauge", "Whether a vhost-user front-end is connected.")
	for _, ls := range all {
		sample("nvblk_frontend_connected", ls.label, bit(ls.st.Connected))
	}
	family("nvblk_frontend_sessions", "gauge", "vhost-user front-ends served at once (two while a guest migrates on this host).")
	for _, ls := range all {
		sample("nvblk_frontend_sessions", ls.label, float64(ls.st.Sessions))
	}
	family("nvblk_frontend_dirty_logging", "gauge", "Front-ends for which the back-end marks a dirty log (a live migration).")
	for _, ls := range all {
		sample("nvblk_frontend_dirty_logging", ls.label, float64(ls.st.Logging))
	}
	family("nvblk_frontend_connections_total", "counter", "vhost-user front-end connections accepted.")
	for _, ls := range all {
		sample("nvblk_frontend_connections_total", ls.label, float64(ls.st.Connections))
	}

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
		eachQueue(func(l string, q *vhost.QueueStats) { sample(g.name, l, g.v(q)) })
	}

	family("nvblk_requests_total", "counter", "Requests completed, by queue and operation.")
	eachQueue(func(l string, q *vhost.QueueStats) {
		for _, op := range []struct {
			name string
			n    uint64
		}{{"read", q.Reads}, {"write", q.Writes}, {"flush", q.Flushes}, {"other", q.Others}} {
			sample("nvblk_requests_total", fmt.Sprintf(`%s,op="%s"`, l, op.name), float64(op.n))
		}
	})
	family("nvblk_request_status_total", "counter", "Requests completed, by queue and virtio-blk status.")
	eachQueue(func(l string, q *vhost.QueueStats) {
		for _, s := range []struct {
			name string
			n    uint64
		}{{"ok", q.OK}, {"ioerr", q.IOErrors}, {"unsupp", q.Unsupported}, {"other", q.OtherStatus}} {
			sample("nvblk_request_status_total", fmt.Sprintf(`%s,status="%s"`, l, s.name), float64(s.n))
		}
	})
	family("nvblk_bytes_total", "counter", "Data bytes moved, by queue and direction (read: to the guest).")
	eachQueue(func(l string, q *vhost.QueueStats) {
		sample("nvblk_bytes_total", l+`,direction="read"`, float64(q.BytesRead))
		sample("nvblk_bytes_total", l+`,direction="write"`, float64(q.BytesWritten))
	})
	family("nvblk_request_duration_seconds", "histogram", "Request service time (taken off the ring to completed), by queue.")
	eachQueue(func(l string, q *vhost.QueueStats) {
		var cum uint64
		for bk := 0; bk < vhost.LatencyBuckets-1; bk++ {
			cum += q.Latency[bk]
			le := strconv.FormatFloat(vhost.BucketUpper(bk).Seconds(), 'g', -1, 64)
			sample("nvblk_request_duration_seconds_bucket", fmt.Sprintf(`%s,le="%s"`, l, le), float64(cum))
		}
		cum += q.Latency[vhost.LatencyBuckets-1]
		sample("nvblk_request_duration_seconds_bucket", l+`,le="+Inf"`, float64(cum))
		sample("nvblk_request_duration_seconds_sum", l, q.LatencySum.Seconds())
		sample("nvblk_request_duration_seconds_count", l, float64(cum))
	})
	return b.Flush()
}
