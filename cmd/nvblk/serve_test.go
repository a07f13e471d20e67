package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

const ioTimeout = 5 * time.Second

// waitListening waits for serve's "# attach" block, which it prints once
// its socket listens. The socket file alone is not enough: it appears at
// bind, a moment before listen, and a dial then is refused.
func waitListening(t *testing.T, stdout *syncBuffer, exited <-chan struct{}) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if strings.Contains(stdout.String(), "# attach ") {
			return
		}
		select {
		case <-exited:
			t.Fatal("serve exited before listening")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not print its attach line")
		}
	}
}

// syncBuffer is a bytes.Buffer the server's goroutines may log into while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// servingInProcess runs `nvblk args...` in-process with its signal context
// replaced by stop; it returns the exit code channel and the output.
func servingInProcess(t *testing.T, args ...string) (stop func() int, stdout, stderr *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	serveContext = func() (context.Context, context.CancelFunc) { return ctx, cancel }
	t.Cleanup(func() { serveContext = signalContext })
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	env := &environment{stdin: bytes.NewReader(nil), stdout: stdout, stderr: stderr}
	code := make(chan int, 1)
	exited := make(chan struct{})
	go func() { code <- run(env, args); close(exited) }()
	for _, a := range args {
		if a == "--socket-path" || a == "--disk" {
			waitListening(t, stdout, exited)
			break
		}
	}
	var once sync.Once
	var c int
	stop = func() int {
		once.Do(func() {
			cancel()
			select {
			case c = <-code:
			case <-time.After(15 * time.Second):
				t.Fatal("serve did not return after its context ended")
			}
		})
		return c
	}
	t.Cleanup(func() { stop() })
	return stop, stdout, stderr
}

func TestServeWritesThroughTheSocketAndFlushesOnStop(t *testing.T) {
	img := formatted(t)
	fdcheck.Check(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, stdout, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--num-queues", "2", "--log-format", "json")

	d, err := frontend.Connect(sock, frontend.Options{NumQueues: 2})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("served by nvblk "), 4096/16*2)
	if err := d.Queues[1].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 8 * 5, Data: data}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 8 * 5, Data: got}, ioTimeout); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, data))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout.String(), "vhost-user-blk-pci,chardev=nvblk0,num-queues=2") ||
		!strings.Contains(stdout.String(), "path="+sock) || !strings.Contains(stdout.String(), "share=on") {
		t.Errorf("stdout lacks the QEMU options:\n%s", stdout)
	}
	var first map[string]any
	line, _, _ := strings.Cut(stderr.String(), "\n")
	if err := json.Unmarshal([]byte(line), &first); err != nil || first["socket"] != sock || first["durability"] != "flush" {
		t.Errorf("first log line is not the JSON start record (%v): %s", err, line)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	// The image is released and holds the data.
	code, out, errOut := nvblk(t, nil, "read", img, "--lba", "5", "--count", "2")
	if code != 0 || out != string(data) {
		t.Fatalf("nvblk read after serve: exit %d (%s), equal %v", code, errOut, out == string(data))
	}
}

func TestConformanceCommandPassesAgainstServe(t *testing.T) {
	img := formatted(t)
	fdcheck.Check(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, _, stderr := servingInProcess(t, "--socket-path", sock, "--blk-file", img, "--num-queues", "2", "--log-level", "warn")
	code, out, errOut := nvblk(t, nil, "conformance", "--socket-path", sock, "--destructive", "--json")
	if code != 0 {
		t.Fatalf("conformance: exit %d: %s\n%s", code, errOut, out)
	}
	var rep struct {
		Checks []struct{ Name, Result, Detail string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Checks) < 30 {
		t.Fatalf("conformance --json: %v, %d checks", err, len(rep.Checks))
	}
	code, out, _ = nvblk(t, nil, "conformance", "--socket-path", sock)
	if code != 0 || !strings.Contains(out, "0 failed") {
		t.Fatalf("conformance without --destructive: exit %d:\n%s", code, out)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d: %s", code, stderr)
	}
}

func TestConformanceAgainstNothingFails(t *testing.T) {
	code, _, stderr := nvblk(t, nil, "conformance", "--socket-path", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "unreachable") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestPrintCapabilitiesIgnoresEverythingElse(t *testing.T) {
	for _, args := range [][]string{
		{"--print-capabilities"},
		{"serve", "--print-capabilities"},
		{"--socket-path", "/nonexistent/x.sock", "--print-capabilities", "--no-such-flag"},
	} {
		code, out, stderr := nvblk(t, nil, args...)
		var caps struct {
			Type     string   `json:"type"`
			Features []string `json:"features"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &caps) != nil {
			t.Fatalf("%q: exit %d, stdout %q, stderr %q", args, code, out, stderr)
		}
		if caps.Type != "block" || strings.Join(caps.Features, ",") != "read-only,blk-file" {
			t.Errorf("%q: capabilities %+v", args, caps)
		}
	}
}

func TestServeUsageErrors(t *testing.T) {
	img := formatted(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no socket", []string{"serve", "--blk-file", img}, "missing --socket-path or --fd"},
		{"socket and fd", []string{"serve", "--socket-path", "s", "--fd", "3", "--blk-file", img}, "mutually exclusive"},
		{"fd of stdout", []string{"--fd", "1", "--blk-file", img}, "--fd 1"},
		{"no image", []string{"--socket-path", "s"}, "missing --blk-file"},
		{"zero queues", []string{"--socket-path", "s", "--blk-file", img, "--num-queues", "0"}, "--num-queues"},
		{"socket mode not octal", []string{"--socket-path", "s", "--blk-file", img, "--socket-mode", "rw-rw----"}, "--socket-mode"},
		{"socket mode past 0777", []string{"--socket-path", "s", "--blk-file", img, "--socket-mode", "04755"}, "--socket-mode"},
		{"unknown socket group", []string{"--socket-path", "s", "--blk-file", img, "--socket-group", "nvblk-no-such-group"}, "no such group"},
		{"socket group for an inherited fd", []string{"--fd", "3", "--blk-file", img, "--socket-group", "0"}, "--socket-group"},
		{"guest memory in bytes", []string{"--socket-path", "s", "--blk-file", img, "--guest-memory", "4096"}, "--guest-memory"},
		{"guest memory not a size", []string{"--socket-path", "s", "--blk-file", img, "--guest-memory", "lots"}, "--guest-memory"},
		{"too many queues", []string{"--socket-path", "s", "--blk-file", img, "--num-queues", "257"}, "want 1..256"},
		{"poll window not a number", []string{"--socket-path", "s", "--blk-file", img, "--poll-us", "fast"}, "want auto, or microseconds"},
		{"poll window past a second", []string{"--socket-path", "s", "--blk-file", img, "--poll-us", "1000001"}, "-poll-us"},
		{"bad durability", []string{"--socket-path", "s", "--blk-file", img, "--durability", "maybe"}, "durability"},
		{"bad log format", []string{"--socket-path", "s", "--blk-file", img, "--log-format", "xml"}, "--log-format"},
		{"bad log level", []string{"--socket-path", "s", "--blk-file", img, "--log-level", "loud"}, "--log-level"},
		{"long serial", []string{"--socket-path", "s", "--blk-file", img, "--serial", strings.Repeat("x", 21)}, "--serial"},
		{"positional image", []string{"serve", "--socket-path", "s", img}, "--blk-file"},
		{"unknown flag", []string{"serve", "--socket-path", "s", "--blk-file", img, "--colour"}, "not defined"},
		{"empty control socket", []string{"--socket-path", "s", "--blk-file", img, "--control-socket", ""}, "--control-socket \"\""},
		{"control socket is the vhost socket", []string{"--socket-path", "s", "--blk-file", img, "--control-socket", "./s"}, "a path of its own"},
		{"conformance without socket", []string{"conformance"}, "--socket-path"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := nvblk(t, nil, c.args...)
			if code != 2 || !strings.Contains(stderr, c.want) || !strings.Contains(stderr, "usage: nvblk") {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
		})
	}
}

func TestServeFailsOnABusyMissingOrCorruptImage(t *testing.T) {
	busy := formatted(t)
	m, err := pmem.Open(busy, pmem.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	corrupt := filepath.Join(t.TempDir(), "zero.img")
	if err := os.WriteFile(corrupt, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(corrupt, 32<<20); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, img, want string }{
		{"busy", busy, "pid"},
		{"missing", filepath.Join(t.TempDir(), "none.img"), "no such file"},
		{"not a BTT", corrupt, corrupt},
	} {
		t.Run(c.name, func(t *testing.T) {
			fdcheck.Check(t)
			sock := filepath.Join(t.TempDir(), "s.sock")
			code, _, stderr := nvblk(t, nil, "--socket-path", sock, "--blk-file", c.img)
			if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			for _, path := range []string{sock, sock + ".ctl"} {
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a socket was created for an image that cannot be served: %v", err)
				}
			}
		})
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// binary builds cmd/nvblk once for the tests that need a real process
// (signals, inherited fds).
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nvblk-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "nvblk")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = errors.New(string(out))
		}
	})
	if binErr != nil {
		t.Fatalf("building nvblk: %v", binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// listeningSocketFile binds a unix socket at path and returns its listening
// fd, for a child process to inherit as a pre-opened socket. The socket
// file stays behind when this process's listener closes: it is the child's.
func listeningSocketFile(t *testing.T, path string) *os.File {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	return f
}

// serveProcess starts the binary and returns it with a channel closed on
// exit.
func serveProcess(t *testing.T, cmd *exec.Cmd) (<-chan struct{}, *syncBuffer) {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return exited, out
}

func writeThrough(t *testing.T, sock string, sector uint64, data []byte) {
	t.Helper()
	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, ioTimeout); err != nil {
		t.Fatal(err)
	}
}

func terminate(t *testing.T, cmd *exec.Cmd, exited <-chan struct{}, out *syncBuffer) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("no exit after SIGTERM:\n%s", out)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, out)
	}
}

// A SIGTERM that lands while serve is still starting (here: as soon as it
// logs that it is serving, before it prints the attach text and serves)
// ends it cleanly: exit 0, image closed, sockets removed. It used to be
// caught only from the moment serving began, so such a signal killed the
// process outright.
func TestServeStoppedWhileStartingExitsZeroAndRemovesItsSockets(t *testing.T) {
	img := formatted(t)
	for i := range 5 {
		sock := filepath.Join(t.TempDir(), "nvblk.sock")
		cmd := exec.Command(binary(t), "serve", "--socket-path", sock, "--blk-file", img)
		exited, out := serveProcess(t, cmd)
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "serving vhost-user-blk"); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("serve did not start:\n%s", out)
			}
		}
		terminate(t, cmd, exited, out)
		if !strings.Contains(out.String(), "image flushed and closed") {
			t.Fatalf("run %d: serve did not close the image:\n%s", i, out)
		}
		wantGone(t, sock, "vhost-user socket")
		wantGone(t, sock+".ctl", "control socket")
	}
}

func TestServeProcessExitsZeroOnSIGTERMWithTheDataOnDisk(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	// No subcommand: the vhost-user backend program conventions.
	cmd := exec.Command(binary(t), "--socket-path", sock, "--blk-file", img)
	exited, out := serveProcess(t, cmd)
	waitListening(t, out, exited)
	data := bytes.Repeat([]byte{0x5a, 0xc3}, 4096)
	writeThrough(t, sock, 8, data)
	terminate(t, cmd, exited, out)
	code, got, stderr := nvblk(t, nil, "read", img, "--lba", "1", "--count", "2")
	if code != 0 || got != string(data) {
		t.Fatalf("nvblk read: exit %d (%s), equal %v", code, stderr, got == string(data))
	}
}

func TestServeProcessOnAnInheritedListeningFd(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "inherited.sock")
	f := listeningSocketFile(t, sock)
	cmd := exec.Command(binary(t), "serve", "--fd", "3", "--blk-file", img)
	cmd.ExtraFiles = []*os.File{f} // fd 3 in the child
	exited, out := serveProcess(t, cmd)
	f.Close()
	data := bytes.Repeat([]byte{0x17}, 4096)
	writeThrough(t, sock, 0, data)
	terminate(t, cmd, exited, out)
	if code, got, _ := nvblk(t, nil, "read", img, "--lba", "0"); code != 0 || got != string(data) {
		t.Fatalf("nvblk read: exit %d, equal %v", code, got == string(data))
	}
}

func TestServeSocketModeWidensTheSocketForAGroup(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, _, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--socket-mode", "0660")
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o660 {
		t.Errorf("socket mode %#o, want 0660", got)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d: %s", code, stderr)
	}
}

func TestServeOffersQueuesForTwoVCPUsWithoutNumQueues(t *testing.T) {
	// libvirt's queues='2', or QEMU's one queue per vCPU of a small guest.
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, stdout, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img)
	d, err := frontend.Connect(sock, frontend.Options{NumQueues: 2})
	if err != nil {
		t.Fatalf("a front-end asking for 2 queues: %v", err)
	}
	if err := d.Queues[1].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 0, Data: make([]byte, 4096)}, ioTimeout); err != nil {
		t.Fatalf("read on the second queue: %v", err)
	}
	d.Close()
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d: %s", code, stderr)
	}
	if want := fmt.Sprintf("num-queues=%d\n", defaultServeQueues); defaultServeQueues < 4 || !strings.Contains(stdout.String(), want) {
		t.Errorf("default of %d queues; stdout lacks %q:\n%s", defaultServeQueues, want, stdout)
	}
}

// An image formatted with fewer free blocks than the default's queues has
// fewer lanes: without --num-queues serve offers a queue per lane; asked
// for more, it refuses, naming the image's lanes.
func TestServeOffersAQueuePerLaneOfAnImageWithFewLanes(t *testing.T) {
	img := formatted(t, "--free-blocks", "2")
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, stdout, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img)
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout.String(), "num-queues=2\n") {
		t.Errorf("serve of an image of 2 lanes without --num-queues; stdout lacks num-queues=2:\n%s", stdout)
	}

	code, _, errs := nvblk(t, nil, "serve", "--socket-path", filepath.Join(t.TempDir(), "s.sock"), "--blk-file", img, "--num-queues", "3")
	if code == 0 || !strings.Contains(errs, "--num-queues") || !strings.Contains(errs, "lanes (2)") {
		t.Fatalf("--num-queues 3 on an image of 2 lanes: exit %d, stderr %q", code, errs)
	}
}

func TestPollUSFlagChoosesTheWorkersPollWindow(t *testing.T) {
	cases := []struct {
		args []string
		want time.Duration
	}{
		{nil, 0}, // adaptive
		{[]string{"--poll-us", "auto"}, 0},
		{[]string{"--poll-us", "0"}, vhost.NeverPoll},
		{[]string{"--poll-us", "50"}, 50 * time.Microsecond},
	}
	for _, c := range cases {
		t.Run(strings.Join(append([]string{"poll-us"}, c.args...), " "), func(t *testing.T) {
			a, _, err := parseServeArgs(c.args)
			if err != nil {
				t.Fatal(err)
			}
			if got := serverOptions(a, serveSettings{}).PollDuration; got != c.want {
				t.Fatalf("PollDuration %v, want %v", got, c.want)
			}
		})
	}
}

func TestServePrintsTheGuestMemoryInBothQEMUOptions(t *testing.T) {
	for _, c := range []struct{ arg, want string }{{"4G", "4G"}, {"1536M", "1536M"}, {"2048MiB", "2G"}} {
		t.Run(c.arg, func(t *testing.T) {
			img := formatted(t)
			sock := filepath.Join(t.TempDir(), "nvblk.sock")
			stop, stdout, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--guest-memory", c.arg)
			if code := stop(); code != 0 {
				t.Fatalf("serve: exit %d: %s", code, stderr)
			}
			out := stdout.String()
			for _, want := range []string{"size=" + c.want + ",share=on", "-m " + c.want + " ", "the guest's RAM, " + c.want} {
				if !strings.Contains(out, want) {
					t.Errorf("--guest-memory %s: stdout lacks %q:\n%s", c.arg, want, out)
				}
			}
		})
	}
}

func TestServePrintsOneGigabyteOfGuestMemoryByDefault(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, stdout, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img)
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d: %s", code, stderr)
	}
	if out := stdout.String(); !strings.Contains(out, "size=1G,share=on") || !strings.Contains(out, "-m 1G ") {
		t.Errorf("stdout lacks size=1G and -m 1G:\n%s", out)
	}
}

// socketGroupForTest is a group serve may give its socket without root
// (a supplementary one, else the process's own), or any as root; by name
// when it has one, so that the lookup is exercised too.
func socketGroupForTest(t *testing.T) (gid int, arg string) {
	t.Helper()
	gid = os.Getegid()
	if os.Geteuid() == 0 {
		gid += 4242 // root may give any gid, named or not
	} else if groups, err := os.Getgroups(); err == nil {
		for _, g := range groups {
			if g != gid {
				gid = g
				break
			}
		}
	}
	arg = strconv.Itoa(gid)
	if g, err := user.LookupGroupId(arg); err == nil {
		arg = g.Name
	}
	return gid, arg
}

func TestServeSocketGroupGivesTheSocketToQEMUsGroup(t *testing.T) {
	img := formatted(t)
	gid, group := socketGroupForTest(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, _, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--socket-mode", "0660", "--socket-group", group)
	var st syscall.Stat_t
	if err := syscall.Lstat(sock, &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Gid) != gid || st.Mode&0o777 != 0o660 {
		t.Errorf("--socket-group %s: socket gid %d mode %#o, want gid %d mode 0660", group, st.Gid, st.Mode&0o777, gid)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d: %s", code, stderr)
	}
}

func TestServeReportsAWriteCacheOnlyWhenWritesAreNotDurableAtOnce(t *testing.T) {
	for _, c := range []struct {
		durability string
		wantFlush  bool
	}{{"flush", true}, {"sync", false}} {
		t.Run(c.durability, func(t *testing.T) {
			img := formatted(t)
			sock := filepath.Join(t.TempDir(), "nvblk.sock")
			stop, _, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--durability", c.durability)
			d, err := frontend.Connect(sock, frontend.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := d.Features&virtio.BlkFFlush != 0; got != c.wantFlush {
				t.Errorf("--durability %s: FLUSH offered %v, want %v", c.durability, got, c.wantFlush)
			}
			d.Close()
			if code := stop(); code != 0 {
				t.Fatalf("serve: exit %d: %s", code, stderr)
			}
		})
	}
}
