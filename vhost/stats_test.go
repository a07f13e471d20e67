package vhost_test

import (
	"testing"
	"time"

	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// TestStatsCountEachQueuesRequests: reads, writes, a flush and a failing
// read land in their queue's counters, bytes and statuses; the snapshot
// shows the connected rings, and the counters outlive the connection.
func TestStatsCountEachQueuesRequests(t *testing.T) {
	e := startEnv(t, envOpts{queues: 2})
	d := connect(t, e, frontend.Options{NumQueues: 2})
	data := pattern(7, 8192)
	for i := 0; i < 3; i++ {
		if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 8, Data: data}, ioTimeout); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Queues[1].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: make([]byte, 4096)}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if err := d.Queues[1].Do(&frontend.Request{Type: virtio.BlkTFlush}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	past := &frontend.Request{Type: virtio.BlkTIn, Sector: d.Capacity(), Data: make([]byte, 512)}
	if err := d.Queues[1].Do(past, ioTimeout); err == nil {
		t.Fatal("a read past the end succeeded")
	}

	st := e.srv.Stats()
	if !st.Connected || st.Connections != 1 || len(st.Queues) != 2 {
		t.Fatalf("snapshot: %+v", st)
	}
	q0, q1 := st.Queues[0], st.Queues[1]
	if !q0.Enabled || !q0.Running || q0.Broken || q0.LastAvail != 3 || q0.InFlight != 0 {
		t.Errorf("queue 0 state: %+v", q0)
	}
	if q0.Requests != 3 || q0.Writes != 3 || q0.BytesWritten != 3*8192 || q0.OK != 3 || q0.Latency.Count() != 3 {
		t.Errorf("queue 0 counters: %+v", q0)
	}
	if q1.Requests != 3 || q1.Reads != 2 || q1.Flushes != 1 || q1.BytesRead != 4096 || q1.OK != 2 || q1.IOErrors != 1 {
		t.Errorf("queue 1 counters: %+v", q1)
	}
	if p := q0.Latency.Quantile(0.99); p <= 0 || p > 10*time.Second {
		t.Errorf("queue 0 p99 %v", p)
	}
	if tot := st.Total(); tot.Requests != 6 || tot.BytesWritten != 3*8192 || tot.BytesRead != 4096 || tot.Latency.Count() != 6 {
		t.Errorf("total: %+v", tot)
	}

	d.Close()
	for deadline := time.Now().Add(ioTimeout); e.srv.Stats().Connected; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still connected after the front-end closed")
		}
	}
	after := e.srv.Stats()
	if after.Queues[0].Requests != 3 || after.Queues[0].Running || after.Queues[0].LastAvail != 0 {
		t.Errorf("after disconnect: %+v", after.Queues[0])
	}
}

// TestDetachDropsTheFrontEndAndServesTheNext: Detach ends the current
// connection (its requests done) and the next front-end is served.
func TestDetachDropsTheFrontEndAndServesTheNext(t *testing.T) {
	e := startEnv(t, envOpts{})
	if e.srv.Detach() {
		t.Fatal("Detach with nobody connected reported a front-end")
	}
	d := connect(t, e, frontend.Options{})
	data := pattern(8, 4096)
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 0, Data: data}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if !e.srv.Detach() {
		t.Fatal("Detach did not find the connected front-end")
	}
	if _, err := d.Conn.GetU64(vhostuser.ReqGetFeatures); err == nil {
		t.Fatal("the detached connection still answers")
	}
	d2 := connect(t, e, frontend.Options{})
	got := make([]byte, len(data))
	if err := d2.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 0, Data: got}, ioTimeout); err != nil || string(got) != string(data) {
		t.Fatalf("next front-end: %v, data equal %v", err, string(got) == string(data))
	}
	if st := e.srv.Stats(); !st.Connected || st.Connections != 2 {
		t.Fatalf("after reconnect: connected %v, %d connections", st.Connected, st.Connections)
	}
}

func TestLatencyHistogramQuantiles(t *testing.T) {
	var h vhost.LatencyHistogram
	if h.Quantile(0.5) != 0 {
		t.Fatal("quantile of an empty histogram")
	}
	h[10] = 98 // [512ns, 1024ns)
	h[20] = 2  // [~0.5ms, ~1ms)
	if p50, p99 := h.Quantile(0.5), h.Quantile(0.99); p50 != 1024*time.Nanosecond || p99 != 1<<20*time.Nanosecond {
		t.Fatalf("p50 %v p99 %v", p50, p99)
	}
}
