// Package reconnect restarts `nvblk serve` under a running guest's I/O:
// QEMU's vhost-user-blk reconnects to the same socket (chardev
// reconnect=1), hands the new back-end the inflight region the old one
// kept (SET_INFLIGHT_FD), and the new back-end resubmits what the old one
// had taken and not completed. The guest must never see an I/O error, and
// every write it saw acknowledged must be on the image.
package reconnect

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var (
	kit      *guest.Kit
	nvblkBin string
	cliErr   error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nvblk-reconnect-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kit, err = guest.NewKit(dir)
	if err != nil {
		// Not a skip: a box without QEMU or a kernel cannot vouch for nvblk.
		fmt.Fprintf(os.Stderr, "FAIL: guest kit: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	nvblkBin = filepath.Join(dir, "nvblk")
	if out, err := exec.Command("go", "build", "-o", nvblkBin, "github.com/nvblk/nvblk/cmd/nvblk").CombinedOutput(); err != nil {
		cliErr = fmt.Errorf("build nvblk CLI: %w\n%s", err, out)
	}
	code := m.Run()
	if !guest.Keep() {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// nvblk runs the CLI and returns stdout; a non-zero exit is an error
// carrying stderr.
func nvblk(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(nvblkBin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("nvblk %v: %w\n%s", args, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

type image struct {
	Path       string
	SectorSize int    `json:"sector_size"`
	NumSectors uint64 `json:"num_sectors"`
}

func formatImage(t *testing.T, size string, sectorSize int) image {
	t.Helper()
	img := image{Path: filepath.Join(t.TempDir(), "nvblk.img")}
	if _, err := nvblk(t, "format", img.Path, "--size", size, "--sector-size", strconv.Itoa(sectorSize)); err != nil {
		t.Fatal(err)
	}
	out, err := nvblk(t, "info", img.Path, "--json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &img); err != nil {
		t.Fatalf("nvblk info --json: %v\n%s", err, out)
	}
	return img
}

// server is one `nvblk serve` process; a test runs several, one after the
// other, on the same socket and image.
type server struct {
	gen    int
	cmd    *exec.Cmd
	mu     sync.Mutex
	log    bytes.Buffer
	exited chan struct{}
	state  *os.ProcessState
}

func (s *server) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.Write(p)
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// serve starts generation gen of the back-end and returns once it listens
// (it prints the QEMU options then). It is killed when the test ends, and
// its log joins the test log if the test failed.
func serve(t *testing.T, gen int, sock string, img image) *server {
	t.Helper()
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	s := &server{gen: gen, exited: make(chan struct{})}
	// Debug logs every vhost-user request: the reconnect handshake
	// (GET/SET_INFLIGHT_FD, SET_VRING_BASE) is in the log of a failure.
	// Sync durability makes each write msync every BTT step, so the
	// back-end holds each request long enough for a kill to catch some
	// in flight.
	s.cmd = exec.Command(nvblkBin, "serve", "--socket-path", sock, "--blk-file", img.Path,
		"--durability", "sync", "--log-level", "debug")
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stderr = s
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start nvblk serve: %v", err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		ready := false
		for sc.Scan() {
			fmt.Fprintln(s, sc.Text())
			if !ready && strings.HasPrefix(sc.Text(), "# attach ") {
				ready = true
				close(listening)
			}
		}
		_, _ = io.Copy(s, stdout)
		_ = s.cmd.Wait()
		s.state = s.cmd.ProcessState
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			t.Logf("nvblk serve #%d output:\n%s", gen, s.output())
		}
	})
	select {
	case <-listening:
		return s
	case <-s.exited:
		t.Fatalf("nvblk serve #%d exited before listening: %v\n%s", gen, s.state, s.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("nvblk serve #%d not listening after 30 s\n%s", gen, s.output())
	}
	return nil
}

// kill ends the back-end with SIGKILL: no drain, no goodbye.
func (s *server) kill(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL nvblk serve #%d: %v", s.gen, err)
	}
	<-s.exited
}

// terminate sends SIGTERM and requires a clean exit (status 0) within
// 10 s: the back-end drains what it took, flushes and closes the image.
func (s *server) terminate(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM nvblk serve #%d: %v", s.gen, err)
	}
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("nvblk serve #%d ignored SIGTERM for 10 s\n%s", s.gen, s.output())
	}
	if !s.state.Success() {
		t.Fatalf("nvblk serve #%d after SIGTERM: %v, want exit status 0\n%s", s.gen, s.state, s.output())
	}
}

// resubmitted is how many requests this back-end resubmitted from the
// inflight region it was handed.
func (s *server) resubmitted() int {
	n := 0
	for _, line := range strings.Split(s.output(), "\n") {
		if !strings.Contains(line, "resubmitted in-flight requests") {
			continue
		}
		if _, v, ok := strings.Cut(line, "requests="); ok {
			k, _ := strconv.Atoi(strings.Fields(v)[0])
			n += k
		}
	}
	return n
}

// resumed is the back-end's account of each queue it resumed from an
// inflight region: requests resubmitted, used index, QEMU's base.
func (s *server) resumed() []string {
	var out []string
	for _, line := range strings.Split(s.output(), "\n") {
		if i := strings.Index(line, "resuming queue from the inflight region"); i >= 0 {
			out = append(out, strings.TrimSpace(line[i:]))
		}
	}
	return out
}
