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

	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
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
	fdcheck.Check(t)
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
			if ioErr = d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 8 * (i % 64), Data: data}, ioTimeout); ioErr != nil {
				return
			}
			if ioErr = d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 8 * (i % 64), Data: buf}, ioTimeout); ioErr != nil {
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
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 0, Data: make([]byte, 4096)}, time.Second); err == nil {
		t.Error("the detached front-end is still served")
	}
	d.Close()
	d2, err := frontend.Connect(sock, frontend.Options{NumQueues: 2})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	// Sector 0 is the first the load wrote.
	if err := d2.Queues[1].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 0, Data: got}, ioTimeout); err != nil || !bytes.Equal(got, data) {
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

// wantGone fails the test if anything is at path.
func wantGone(t *testing.T, path, what string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s %s: %v, want nothing there", what, path, err)
	}
}

// TestStatusBySocketPathReachesAServeStartedWithoutControlSocket: the
// operator knows only the vhost-user socket S; serve, given no
// --control-socket, opened S.ctl (logged once, shown under the attach
// text, 0600), and status and detach --socket-path S reach it. It is gone
// once serve stops.
func TestStatusBySocketPathReachesAServeStartedWithoutControlSocket(t *testing.T) {
	img := formatted(t)
	fdcheck.Check(t)
	sock := filepath.Join(t.TempDir(), "vm1.sock")
	ctl := sock + ".ctl"
	stop, stdout, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--log-format", "json")

	if got := logField(t, logs, "control socket listening", "control_socket"); got != ctl {
		t.Errorf("logged control socket %q, want %q", got, ctl)
	}
	if n := strings.Count(logs.String(), ctl); n != 1 {
		t.Errorf("the control socket is named %d times in the log, want once:\n%s", n, logs)
	}
	if want := "# control socket " + ctl + ": nvblk status|detach --socket-path " + sock + "\n"; !strings.Contains(stdout.String(), want) {
		t.Errorf("stdout lacks %q:\n%s", want, stdout)
	}
	if fi, err := os.Lstat(ctl); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v, %v; want a 0600 socket", fi, err)
	}
	code, out, stderr := nvblk(t, nil, "status", "--socket-path", sock, "--json")
	var st control.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Connected || len(st.Queues) != int(defaultServeQueues) {
		t.Fatalf("status --socket-path: exit %d: %s%s", code, stderr, out)
	}
	code, out, stderr = nvblk(t, nil, "detach", "--socket-path", sock)
	if code != 0 || !strings.Contains(out, "no vhost-user front-end was connected") {
		t.Fatalf("detach --socket-path: exit %d: %s%s", code, stderr, out)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d:\n%s", code, logs)
	}
	wantGone(t, ctl, "control socket")
}

// TestControlSocketNoneOpensNothing: with --control-socket none serve
// opens no control socket, says nothing of one, and status --socket-path
// fails with one line saying S.ctl is not there and why that may be.
func TestControlSocketNoneOpensNothing(t *testing.T) {
	img := formatted(t)
	fdcheck.Check(t)
	sock := filepath.Join(t.TempDir(), "vm1.sock")
	stop, stdout, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--control-socket", "none")
	wantGone(t, sock+".ctl", "control socket")
	wantGone(t, "none", "control socket")
	if strings.Contains(stdout.String(), "control socket") || strings.Contains(logs.String(), "control socket") {
		t.Errorf("serve mentions a control socket:\n%s\n%s", stdout, logs)
	}
	for _, cmd := range []string{"status", "detach"} {
		code, _, stderr := nvblk(t, nil, cmd, "--socket-path", sock)
		if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "control socket "+sock+".ctl is not there") ||
			!strings.Contains(stderr, "--control-socket none") {
			t.Errorf("%s: exit %d, stderr %q", cmd, code, stderr)
		}
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d:\n%s", code, logs)
	}
}

// A vhost-user socket path that fits, with no room left for ".ctl": serve
// still serves the guest, says once why there is no control socket, and
// status says it is not there.
func TestServeWhoseDefaultControlSocketPathIsTooLongStillServes(t *testing.T) {
	img := formatted(t)
	fdcheck.Check(t)
	dir := t.TempDir()
	// 107 bytes is the most sun_path holds; S.ctl is 4 more.
	sock := filepath.Join(dir, strings.Repeat("s", 107-len(dir)-1))
	if len(sock) != 107 {
		t.Fatalf("socket path is %d bytes, want 107", len(sock))
	}
	stop, _, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img)
	wantGone(t, sock+".ctl", "control socket")
	if !strings.Contains(logs.String(), "no default control socket") || !strings.Contains(logs.String(), "socket path too long") {
		t.Errorf("serve does not say why it opened no control socket:\n%s", logs)
	}
	code, _, stderr := nvblk(t, nil, "status", "--socket-path", sock)
	if code != 1 || !strings.Contains(stderr, "is not there") {
		t.Errorf("status: exit %d, stderr %q", code, stderr)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d:\n%s", code, logs)
	}
}

// TestStatusAndDetachWantExactlyOneOfSocketPathAndControlSocket: both or
// neither is a usage error: exit 2, the problem on one line, then the
// usage line.
func TestStatusAndDetachWantExactlyOneOfSocketPathAndControlSocket(t *testing.T) {
	dir := t.TempDir()
	for _, cmd := range []string{"status", "detach"} {
		for _, c := range []struct {
			name string
			args []string
			want string
		}{
			{"both", []string{"--socket-path", filepath.Join(dir, "s"), "--control-socket", filepath.Join(dir, "c")}, "mutually exclusive"},
			{"neither", nil, "missing --socket-path S"},
		} {
			t.Run(cmd+" "+c.name, func(t *testing.T) {
				code, out, stderr := nvblk(t, nil, append([]string{cmd}, c.args...)...)
				lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
				if code != 2 || out != "" || len(lines) != 2 || !strings.HasPrefix(lines[0], "nvblk "+cmd+": ") ||
					!strings.Contains(lines[0], c.want) || !strings.HasPrefix(lines[1], "usage: nvblk "+cmd+" --socket-path S | --control-socket PATH") {
					t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
				}
			})
		}
	}
}

// TestDefaultControlSocketIsRemovedAfterSIGTERM: a serve process asked
// through S.ctl, then stopped the way systemd stops it, leaves neither S
// nor S.ctl behind.
func TestDefaultControlSocketIsRemovedAfterSIGTERM(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "vm1.sock")
	cmd := exec.Command(binary(t), "serve", "--socket-path", sock, "--blk-file", img)
	exited, out := serveProcess(t, cmd)
	waitListening(t, out, exited)
	if code, text, stderr := nvblk(t, nil, "status", "--socket-path", sock); code != 0 || !strings.Contains(text, "front-end: none connected") {
		t.Fatalf("status: exit %d: %s%s", code, stderr, text)
	}
	terminate(t, cmd, exited, out)
	wantGone(t, sock+".ctl", "control socket")
	wantGone(t, sock, "vhost-user socket")
}

// TestStaleDefaultControlSocketOfAKilledServeIsReplaced: a serve killed
// with SIGKILL leaves S.ctl behind; the next serve on S takes its place,
// as it does S itself.
func TestStaleDefaultControlSocketOfAKilledServeIsReplaced(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "vm1.sock")
	cmd := exec.Command(binary(t), "serve", "--socket-path", sock, "--blk-file", img)
	exited, out := serveProcess(t, cmd)
	waitListening(t, out, exited)
	cmd.Process.Kill()
	<-exited
	if _, err := os.Lstat(sock + ".ctl"); err != nil {
		t.Fatalf("SIGKILL left no control socket to test with: %v", err)
	}
	fdcheck.Check(t)
	stop, _, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img)
	if code, text, stderr := nvblk(t, nil, "status", "--socket-path", sock); code != 0 || !strings.Contains(text, "front-end: none connected") {
		t.Fatalf("status: exit %d: %s%s", code, stderr, text)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d:\n%s", code, logs)
	}
	wantGone(t, sock+".ctl", "control socket")
}

// TestServeRefusesAStrayFileAtTheDefaultControlSocket: a regular file at
// S.ctl is not replaced; serve fails with one line that says the path was
// its default and how to choose another, before creating S.
func TestServeRefusesAStrayFileAtTheDefaultControlSocket(t *testing.T) {
	img := formatted(t)
	fdcheck.Check(t)
	sock := filepath.Join(t.TempDir(), "vm1.sock")
	if err := os.WriteFile(sock+".ctl", []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := nvblk(t, nil, "serve", "--socket-path", sock, "--blk-file", img)
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, sock+".ctl") ||
		!strings.Contains(stderr, "default control socket") || !strings.Contains(stderr, "--control-socket none") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if b, err := os.ReadFile(sock + ".ctl"); err != nil || string(b) != "keep" {
		t.Errorf("the stray file changed: %q, %v", b, err)
	}
	wantGone(t, sock, "vhost-user socket")
}

// TestDefaultControlSocketStays0600WhenSocketModeWidensTheVhostSocket:
// --socket-mode 0660 lets a group attach as a front-end; it does not let
// that group detach the guest.
func TestDefaultControlSocketStays0600WhenSocketModeWidensTheVhostSocket(t *testing.T) {
	img := formatted(t)
	fdcheck.Check(t)
	sock := filepath.Join(t.TempDir(), "vm1.sock")
	stop, _, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--socket-mode", "0660")
	for path, want := range map[string]os.FileMode{sock: 0o660, sock + ".ctl": 0o600} {
		if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, %v; want mode %#o", path, fi, err, want)
		}
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d:\n%s", code, logs)
	}
}

// TestServeOnAnInheritedFdOpensAControlSocketOnlyWhenAsked: on --fd serve
// knows no socket path to put S.ctl next to: without --control-socket it
// opens none, with one it opens that.
func TestServeOnAnInheritedFdOpensAControlSocketOnlyWhenAsked(t *testing.T) {
	for _, c := range []struct {
		name    string
		control string // "" for no --control-socket
	}{{"not asked", ""}, {"asked", "control.sock"}} {
		t.Run(c.name, func(t *testing.T) {
			img := formatted(t)
			dir := t.TempDir()
			sock := filepath.Join(dir, "inherited.sock")
			f := listeningSocketFile(t, sock)
			args := []string{"serve", "--fd", "3", "--blk-file", img}
			if c.control != "" {
				args = append(args, "--control-socket", filepath.Join(dir, c.control))
			}
			cmd := exec.Command(binary(t), args...)
			cmd.ExtraFiles = []*os.File{f}
			exited, out := serveProcess(t, cmd)
			f.Close()
			waitListening(t, out, exited)
			wantGone(t, sock+".ctl", "control socket")
			if c.control == "" {
				if code, _, stderr := nvblk(t, nil, "status", "--socket-path", sock); code != 1 || !strings.Contains(stderr, "is not there") {
					t.Errorf("status --socket-path: exit %d, stderr %q", code, stderr)
				}
				if strings.Contains(out.String(), "control socket") {
					t.Errorf("serve mentions a control socket:\n%s", out)
				}
			} else {
				ctl := filepath.Join(dir, c.control)
				if code, text, stderr := nvblk(t, nil, "status", "--control-socket", ctl); code != 0 || !strings.Contains(text, "front-end:") {
					t.Errorf("status --control-socket: exit %d: %s%s", code, stderr, text)
				}
				if want := "# control socket " + ctl + ": nvblk status|detach --control-socket " + ctl; !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			terminate(t, cmd, exited, out)
			if c.control != "" {
				wantGone(t, filepath.Join(dir, c.control), "control socket")
			}
		})
	}
}
