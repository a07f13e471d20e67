package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/vhost/control"
	"github.com/nvblk/nvblk/vhost/frontend"
)

// logField finds the first JSON log line with msg and returns its field.
func logField(t *testing.T, logs *syncBuffer, msg, field string) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, line := range strings.Split(logs.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				s, _ := rec[field].(string)
				return s
			}
		}
	}
	t.Fatalf("no %q log line:\n%s", msg, logs)
	return ""
}

// statusOf runs `nvblk status --json` against the control socket.
func statusOf(t *testing.T, ctl string) control.Status {
	t.Helper()
	code, out, stderr := nvblk(t, nil, "status", "--control-socket", ctl, "--json")
	var st control.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status: exit %d: %s%s", code, stderr, out)
	}
	return st
}

// scrape fetches the metrics and returns the samples by name{labels}.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("GET %s: %s, %q", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		k, v, _ := strings.Cut(sc.Text(), " ")
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("metrics line %q", sc.Text())
		}
		m[k] = f
	}
	return m
}

// TestOperatorWatchesLoadThenDetachesTheGuest: while a front-end writes
// and reads, `nvblk status` shows its queue busy with a rate and latency,
// and the metrics endpoint counts the same requests; `nvblk detach` drops
// the front-end, and the next one is served with the data in place.
func TestOperatorWatchesLoadThenDetachesTheGuest(t *testing.T) {
	img := formatted(t)
	checkFDs(t)
	dir := t.TempDir()
	sock, ctl := filepath.Join(dir, "nvblk.sock"), filepath.Join(dir, "control.sock")
	stop, _, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--num-queues", "2",
		"--control-socket", ctl, "--metrics-addr", "127.0.0.1:0", "--log-format", "json")
	metrics := logField(t, logs, "metrics endpoint listening", "metrics")

	d, err := frontend.Connect(sock, frontend.Options{NumQueues: 2})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("status"), 4096/6+1)[:4096]
	var ioErr error
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for i := uint64(0); ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if ioErr = d.Queues[0].Do(&frontend.Request{Type: frontend.TypeOut, Sector: 8 * (i % 64), Data: data}, ioTimeout); ioErr != nil {
				return
			}
			if ioErr = d.Queues[0].Do(&frontend.Request{Type: frontend.TypeIn, Sector: 8 * (i % 64), Data: buf}, ioTimeout); ioErr != nil {
				return
			}
		}
	}()

	// Rates need a full sampling interval of load.
	var st control.Status
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		st = statusOf(t, ctl)
		if st.Queues[0].IOPS > 0 || time.Now().After(deadline) {
			break
		}
	}
	q0, q1 := st.Queues[0], st.Queues[1]
	if !st.Connected || st.Connections != 1 || len(st.Queues) != 2 || q0.IOPS <= 0 || q0.Requests == 0 ||
		!q0.Enabled || !q0.Running || q0.Broken || q0.LatencyP99 <= 0 || q0.WriteBytesPerSec <= 0 {
		t.Fatalf("status under load: connected %v, queue 0 %+v", st.Connected, q0)
	}
	if q1.Requests != 0 || st.Total.Requests < q0.Requests || st.Total.IOErrors != 0 {
		t.Errorf("queue 1 %+v, total %+v", q1, st.Total)
	}
	code, text, _ := nvblk(t, nil, "status", "--control-socket", ctl)
	for _, want := range []string{"front-end: connected", "IOPS", "total", "queue 0 latency", "#"} {
		if code != 0 || !strings.Contains(text, want) {
			t.Errorf("status text lacks %q (exit %d):\n%s", want, code, text)
		}
	}
	m := scrape(t, metrics)
	if m[`nvblk_requests_total{queue="0",op="write"}`] == 0 || m[`nvblk_frontend_connected`] != 1 ||
		m[`nvblk_request_duration_seconds_count{queue="0"}`] == 0 {
		t.Errorf("metrics do not show the load: %v", m)
	}

	close(done)
	wg.Wait()
	if ioErr != nil {
		t.Fatal(ioErr)
	}
	code, out, stderr := nvblk(t, nil, "detach", "--control-socket", ctl)
	if code != 0 || !strings.Contains(out, "detached") {
		t.Fatalf("detach: exit %d: %s%s", code, out, stderr)
	}
	if err := d.Queues[0].Do(&frontend.Request{Type: frontend.TypeIn, Sector: 0, Data: make([]byte, 4096)}, time.Second); err == nil {
		t.Error("the detached front-end is still served")
	}
	d.Close()
	d2, err := frontend.Connect(sock, frontend.Options{NumQueues: 2})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	// Sector 0 is the first the load wrote.
	if err := d2.Queues[1].Do(&frontend.Request{Type: frontend.TypeIn, Sector: 0, Data: got}, ioTimeout); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("next front-end: %v, data equal %v", err, bytes.Equal(got, data))
	}
	if st := statusOf(t, ctl); !st.Connected || st.Connections != 2 || st.Queues[1].Reads != 1 {
		t.Errorf("after reconnect: connected %v, %d connections, queue 1 %+v", st.Connected, st.Connections, st.Queues[1])
	}
	d2.Close()
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d:\n%s", code, logs)
	}
	if _, err := os.Stat(ctl); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left behind: %v", err)
	}
}

func TestStatusOfNothingFails(t *testing.T) {
	code, _, stderr := nvblk(t, nil, "status", "--control-socket", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "none.sock") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// TestServeProcessSocketActivatedBySystemd: started the way systemd starts
// a socket-activated nvblk@.service (the listening socket at fd 3,
// LISTEN_FDS=1, LISTEN_PID its own pid), serve takes the socket with no
// --socket-path or --fd.
func TestServeProcessSocketActivatedBySystemd(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "activated.sock")
	f := listeningSocketFile(t, sock)
	// The shell's pid is the pid of the program it execs.
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" --blk-file "$1" --log-format json`, binary(t), img)
	cmd.ExtraFiles = []*os.File{f}
	exited, out := serveProcess(t, cmd)
	f.Close()
	data := bytes.Repeat([]byte{0xa5}, 4096)
	writeThrough(t, sock, 16, data)
	terminate(t, cmd, exited, out)
	if !strings.Contains(out.String(), `"socket":"`+sock+`"`) {
		t.Errorf("the start record does not name the activated socket:\n%s", out)
	}
	if code, got, _ := nvblk(t, nil, "read", img, "--lba", "2"); code != 0 || got != string(data) {
		t.Fatalf("nvblk read: exit %d, equal %v", code, got == string(data))
	}
}

// TestServeIgnoresASocketMeantForAnotherProcess: LISTEN_* inherited from
// a parent (LISTEN_PID not ours) are not taken as activation.
func TestServeIgnoresASocketMeantForAnotherProcess(t *testing.T) {
	img := formatted(t)
	cmd := exec.Command(binary(t), "serve", "--blk-file", img)
	cmd.Env = append(os.Environ(), "LISTEN_PID=1", "LISTEN_FDS=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "missing --socket-path or --fd") {
		t.Fatalf("%v: %s", err, out)
	}
}
