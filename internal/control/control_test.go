package control

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/vhost"
)

// fakeTarget is a backend whose counters the test moves by hand.
type fakeTarget struct {
	mu       sync.Mutex // guards st and detached
	st       vhost.Stats
	detached int
}

func (f *fakeTarget) Stats() vhost.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	st.Time = time.Now()
	st.Queues = append([]vhost.QueueStats(nil), f.st.Queues...)
	return st
}

func (f *fakeTarget) Detach() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	was := f.st.Connected
	f.st.Connected = false
	f.detached++
	return was
}

// add completes n 4 KiB reads of 1.5µs on queue q.
func (f *fakeTarget) add(q int, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &f.st.Queues[q]
	s.Requests += n
	s.Reads += n
	s.OK += n
	s.BytesRead += 4096 * n
	s.Latency[11] += n
	s.LatencySum += time.Duration(n) * 1500 * time.Nanosecond
}

func newFake() *fakeTarget {
	return &fakeTarget{st: vhost.Stats{Connected: true, Connections: 1,
		Queues: []vhost.QueueStats{{Index: 0, Enabled: true, Running: true}, {Index: 1}}}}
}

func listen(t *testing.T, s *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	return sock
}

func TestStatusReportsRatesOverTheLastInterval(t *testing.T) {
	f := newFake()
	s := NewServer(f, 50*time.Millisecond)
	defer s.Close()
	sock := listen(t, s)

	// Load arrives; after a full sampling interval it shows as a rate.
	f.add(0, 1000)
	time.Sleep(130 * time.Millisecond)
	r, err := Call(sock, "status", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st := r.Status
	if st == nil || !st.Connected || len(st.Queues) != 2 || st.Interval <= 0 {
		t.Fatalf("status: %+v", st)
	}
	q0 := st.Queues[0]
	if q0.Requests != 1000 || q0.BytesRead != 4096*1000 || !q0.Enabled || q0.LatencyP50 != 2048*time.Nanosecond {
		t.Errorf("queue 0: %+v", q0)
	}
	if st.Total.Requests != 1000 || st.Total.Index != -1 {
		t.Errorf("total: %+v", st.Total)
	}
	// The load stopped: the last interval saw none of it.
	time.Sleep(130 * time.Millisecond)
	r, _ = Call(sock, "status", time.Second)
	if r.Status.Queues[0].IOPS != 0 || r.Status.Queues[0].Requests != 1000 {
		t.Errorf("idle queue: %+v", r.Status.Queues[0])
	}
	// Steady load shows as a positive rate.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				f.add(1, 10)
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	r, _ = Call(sock, "status", time.Second)
	close(stop)
	if q1 := r.Status.Queues[1]; q1.IOPS <= 0 || q1.ReadBytesPerSec != q1.IOPS*4096 || q1.IntervalLatencyP99 != 2048*time.Nanosecond {
		t.Errorf("busy queue 1: iops %v, read B/s %v, interval p99 %v", q1.IOPS, q1.ReadBytesPerSec, q1.IntervalLatencyP99)
	}
}

func TestOneReplyLinePerRequestLine(t *testing.T) {
	f := newFake()
	s := NewServer(f, 0)
	defer s.Close()
	sock := listen(t, s)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "{\"cmd\":\"stats\"}\n{\"cmd\":\"frobnicate\"}\nnot json\n{\"cmd\":\"detach\"}\n{\"cmd\":\"detach\"}\n")
	rd := bufio.NewScanner(c)
	var lines []string
	for len(lines) < 5 && rd.Scan() {
		lines = append(lines, rd.Text())
	}
	want := []string{`"ok":true,"stats":{`, `"ok":false,"error":"unknown cmd \"frobnicate\"`, `"ok":false,"error":"bad request`,
		`"ok":true,"detached":true`, `"ok":true,"detached":false`}
	if len(lines) != len(want) {
		t.Fatalf("%d reply lines: %q", len(lines), lines)
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("reply %d = %s; want it to contain %s", i, lines[i], w)
		}
	}
	if _, err := Call(sock, "nope", time.Second); err == nil || !strings.Contains(err.Error(), "unknown cmd") {
		t.Errorf("Call of an unknown command: %v", err)
	}
}

func TestCloseEndsConnectionsAndListeners(t *testing.T) {
	s := NewServer(newFake(), 0)
	sock := listen(t, s)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on an idle connection")
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after Close")
	}
}

// parseExposition checks text against the exposition format's rules
// (every sample of a declared family, names and values well formed) and
// returns the samples by name{labels}.
func parseExposition(t *testing.T, text string) map[string]float64 {
	t.Helper()
	types := map[string]string{}
	samples := map[string]float64{}
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if strings.HasPrefix(line, "# HELP ") {
			continue
		}
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(f, " ")
			types[name] = typ
			continue
		}
		key, val, ok := strings.Cut(line, " ")
		v, err := strconv.ParseFloat(val, 64)
		if !ok || err != nil {
			t.Fatalf("line %d: %q is not name value", i+1, line)
		}
		name, _, _ := strings.Cut(key, "{")
		fam := name
		if types[fam] == "" {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suf); ok && types[b] == "histogram" {
					fam = b
				}
			}
		}
		if types[fam] == "" {
			t.Fatalf("line %d: sample %s of no declared family", i+1, name)
		}
		if strings.Contains(key, "{") && !strings.HasSuffix(key, "}") {
			t.Fatalf("line %d: bad labels in %q", i+1, key)
		}
		samples[key] = v
	}
	return samples
}

func TestMetricsAreValidPrometheusText(t *testing.T) {
	f := newFake()
	f.add(0, 3)
	rec := httptest.NewRecorder()
	MetricsHandler(f).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); ct != ContentType {
		t.Errorf("content type %q", ct)
	}
	m := parseExposition(t, rec.Body.String())
	for key, want := range map[string]float64{
		`nvblk_frontend_connected`:                                        1,
		`nvblk_requests_total{queue="0",op="read"}`:                       3,
		`nvblk_bytes_total{queue="0",direction="read"}`:                   3 * 4096,
		`nvblk_request_status_total{queue="0",status="ok"}`:               3,
		`nvblk_queue_enabled{queue="1"}`:                                  0,
		`nvblk_request_duration_seconds_bucket{queue="0",le="1.024e-06"}`: 0,
		`nvblk_request_duration_seconds_bucket{queue="0",le="2.048e-06"}`: 3,
		`nvblk_request_duration_seconds_bucket{queue="0",le="+Inf"}`:      3,
		`nvblk_request_duration_seconds_count{queue="0"}`:                 3,
		`nvblk_request_duration_seconds_sum{queue="0"}`:                   4.5e-06,
	} {
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
}

// fakeDisks is a Disks of fake targets; Add takes "name=N" and nothing
// else.
type fakeDisks struct {
	mu    sync.Mutex // guards disks
	disks []Disk
}

func (f *fakeDisks) Add(spec string) (DiskInfo, error) {
	name, ok := strings.CutPrefix(spec, "name=")
	if !ok {
		return DiskInfo{}, fmt.Errorf("fake: bad spec %q", spec)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d := Disk{Info: DiskInfo{Name: name}, Target: newFake()}
	f.disks = append(f.disks, d)
	return d.Info, nil
}

func (f *fakeDisks) Remove(ctx context.Context, name string, mode RemoveMode) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, d := range f.disks {
		if d.Info.Name == name {
			f.disks = append(f.disks[:i], f.disks[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("fake: no disk %s", name)
}

func (f *fakeDisks) List() []Disk {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Disk(nil), f.disks...)
}

func TestDisksMetricsLabelEverySampleWithItsDisk(t *testing.T) {
	f := &fakeDisks{}
	f.Add("name=vm1")
	f.Add("name=vm2")
	f.disks[1].Target.(*fakeTarget).add(0, 5)
	rec := httptest.NewRecorder()
	DisksMetricsHandler(f).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	m := parseExposition(t, rec.Body.String())
	for key, want := range map[string]float64{
		`nvblk_frontend_connected{disk="vm1"}`:                       1,
		`nvblk_requests_total{disk="vm1",queue="0",op="read"}`:       0,
		`nvblk_requests_total{disk="vm2",queue="0",op="read"}`:       5,
		`nvblk_request_duration_seconds_count{disk="vm2",queue="0"}`: 5,
	} {
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	if _, ok := m[`nvblk_frontend_connected`]; ok {
		t.Error("an unlabelled sample among the disks'")
	}
}

func TestDisksStatusListsEveryDiskAndDiskCommandsChangeThem(t *testing.T) {
	f := &fakeDisks{}
	f.Add("name=vm1")
	s := NewDisksServer(f, Options{Interval: 50 * time.Millisecond})
	defer s.Close()
	sock := listen(t, s)
	if _, err := Do(sock, Request{Cmd: "disk-add", Spec: "name=vm2"}, time.Second); err != nil {
		t.Fatal(err)
	}
	r, err := Call(sock, "status", time.Second)
	if err != nil || len(r.Disks) != 2 || r.Disks[1].Name != "vm2" || r.Disks[1].Status == nil || !r.Disks[1].Attached {
		t.Fatalf("status of two disks: %+v, %v", r, err)
	}
	if _, err := Do(sock, Request{Cmd: "disk-remove", Disk: "vm1", Mode: RemoveForce}, time.Second); err != nil {
		t.Fatal(err)
	}
	if r, err := Call(sock, "disk-list", time.Second); err != nil || len(r.Disks) != 1 || r.Disks[0].Name != "vm2" {
		t.Fatalf("list after remove: %+v, %v", r, err)
	}
	if _, err := Do(sock, Request{Cmd: "detach"}, time.Second); err == nil || !strings.Contains(err.Error(), "which disk") {
		t.Errorf("detach without a disk: %v", err)
	}
}

func TestARequestWithAnUnknownFieldIsRefused(t *testing.T) {
	s := NewServer(newFake(), 0)
	defer s.Close()
	if r := s.Handle([]byte(`{"cmd":"detach","disk_name":"vm1"}`)); r.OK || !strings.Contains(r.Error, `unknown field "disk_name"`) {
		t.Errorf("reply %+v", r)
	}
	if r := s.Handle([]byte(`{"cmd":"disk-list"}`)); r.OK || !strings.Contains(r.Error, "--disk") {
		t.Errorf("disk-list on a one-disk server: %+v", r)
	}
}
