package control

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"

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
