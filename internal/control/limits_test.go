package control

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/fdcheck"
)

// bound is how long a test waits for something that must happen: a bound
// on a hang, not a measure of speed.
const bound = 10 * time.Second

// expectClosed fails t unless the peer closes c within bound (what it
// sends first is read and dropped).
func expectClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(bound))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s still open after %v", what, bound)
	}
}

// startMetrics serves NewMetricsServer(o) on a loopback port and returns
// its address.
func startMetrics(t *testing.T, o MetricsOptions) string {
	t.Helper()
	fdcheck.Check(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewMetricsServer(newFake(), o)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// scraper is one keep-alive HTTP connection to the metrics endpoint.
type scraper struct {
	net.Conn
	rd *bufio.Reader
}

func dialScraper(t *testing.T, addr string) *scraper {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &scraper{Conn: c, rd: bufio.NewReader(c)}
}

// scrape GETs /metrics on the connection and checks the answer.
func (s *scraper) scrape(t *testing.T) {
	t.Helper()
	s.SetDeadline(time.Now().Add(bound))
	defer s.SetDeadline(time.Time{})
	if _, err := io.WriteString(s, "GET /metrics HTTP/1.1\r\nHost: nvblk\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(s.rd, nil)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "nvblk_frontend_connected 1") {
		t.Fatalf("scrape: status %d, %v: %.80q", resp.StatusCode, err, body)
	}
}

// TestMetricsIdleConnectionsAreClosed: a scraper's keep-alive connection
// that sends no next request is closed after the idle timeout; one that
// never sends a request is closed after the read timeout.
func TestMetricsIdleConnectionsAreClosed(t *testing.T) {
	addr := startMetrics(t, MetricsOptions{ReadTimeout: 100 * time.Millisecond, IdleTimeout: 100 * time.Millisecond})
	s := dialScraper(t, addr)
	s.scrape(t)
	expectClosed(t, s, "an idle keep-alive connection")
	silent := dialScraper(t, addr)
	expectClosed(t, silent, "a connection that never sent a request")
}

// TestMetricsConnectionsOverTheCapAreClosed: with the cap reached, one
// more connection is closed at once while those within the cap are
// served; a place freed is taken by the next.
func TestMetricsConnectionsOverTheCapAreClosed(t *testing.T) {
	addr := startMetrics(t, MetricsOptions{MaxConns: 2})
	a, b := dialScraper(t, addr), dialScraper(t, addr)
	a.scrape(t)
	b.scrape(t)
	expectClosed(t, dialScraper(t, addr), "a connection over the cap")
	a.scrape(t)
	b.scrape(t)
	a.Close()
	// The server sees a's close on its own time: retry until it has.
	for deadline := time.Now().Add(bound); ; time.Sleep(10 * time.Millisecond) {
		c := dialScraper(t, addr)
		c.SetDeadline(time.Now().Add(bound))
		io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: nvblk\r\n\r\n")
		if resp, err := http.ReadResponse(c.rd, nil); err == nil {
			resp.Body.Close()
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the place a closed connection left is not given to the next")
		}
	}
}

// listenControl serves s on a fresh unix socket and returns its path.
func listenControl(t *testing.T, s *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

// controlConn is one connection to the control socket.
type controlConn struct {
	net.Conn
	rd *bufio.Reader
}

func dialControl(t *testing.T, sock string) *controlConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &controlConn{Conn: c, rd: bufio.NewReader(c)}
}

// ask sends one request line and returns the reply line.
func (c *controlConn) ask(t *testing.T, cmd string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(bound))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, `{"cmd":"`+cmd+`"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	line, err := c.rd.ReadString('\n')
	if err != nil {
		t.Fatalf("%s reply: %v", cmd, err)
	}
	return line
}

// TestControlIdleConnectionsAreClosed: a control connection that sends no
// request line for the idle timeout is closed, whether it sent some
// before or none at all.
func TestControlIdleConnectionsAreClosed(t *testing.T) {
	fdcheck.Check(t)
	s := NewServerWithOptions(newFake(), Options{IdleTimeout: 100 * time.Millisecond})
	sock := listenControl(t, s)
	c := dialControl(t, sock)
	if r := c.ask(t, "stats"); !strings.Contains(r, `"ok":true`) {
		t.Fatalf("stats: %s", r)
	}
	expectClosed(t, c, "a control connection idle after a request")
	expectClosed(t, dialControl(t, sock), "a control connection that never sent a request")
}

// TestControlConnectionsOverTheCapAreRefused: with the cap reached, one
// more connection gets an error line and is closed, while those within
// the cap go on answering.
func TestControlConnectionsOverTheCapAreRefused(t *testing.T) {
	fdcheck.Check(t)
	s := NewServerWithOptions(newFake(), Options{MaxConns: 2})
	sock := listenControl(t, s)
	a, b := dialControl(t, sock), dialControl(t, sock)
	a.ask(t, "stats")
	b.ask(t, "stats")
	over := dialControl(t, sock)
	over.SetReadDeadline(time.Now().Add(bound))
	if line, err := over.rd.ReadString('\n'); err != nil || !strings.Contains(line, "too many control connections") {
		t.Fatalf("connection over the cap: %q, %v", line, err)
	}
	expectClosed(t, over, "a connection over the cap")
	for _, c := range []*controlConn{a, b} {
		if r := c.ask(t, "status"); !strings.Contains(r, `"ok":true`) {
			t.Fatalf("status within the cap: %s", r)
		}
	}
}

// TestControlServesAfterRunningOutOfFDs: a client connects while the
// process has no file descriptor left (RLIMIT_NOFILE lowered to what is
// open), so accepting it fails with EMFILE. Serve waits and retries instead
// of returning; once descriptors are available again, that client and the
// next are answered.
func TestControlServesAfterRunningOutOfFDs(t *testing.T) {
	fdcheck.Check(t)
	lg := logrus.New()
	lg.SetLevel(logrus.WarnLevel)
	logs := logtest.NewLocal(lg)
	s := NewServerWithOptions(newFake(), Options{Logger: lg})
	sock := listenControl(t, s)

	// Nonblocking, so that the File takes deadlines.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "client")
	defer f.Close()
	restore := fdcheck.Exhaust(t)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		restore()
		t.Fatal(err)
	}
	waitLog(t, logs, "control: accept failed", restore)
	restore()

	f.SetDeadline(time.Now().Add(bound))
	if _, err := io.WriteString(f, `{"cmd":"stats"}`+"\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(f).ReadString('\n'); err != nil || !strings.Contains(line, `"ok":true`) {
		t.Fatalf("the client that connected while fds ran out: %q, %v", line, err)
	}
	if _, err := Call(sock, "status", bound); err != nil {
		t.Fatalf("the next client: %v", err)
	}
}

// waitLog waits for a log entry whose message starts with prefix; on
// failure it runs before (restoring the fd limit, say) and fails t.
func waitLog(t *testing.T, logs *logtest.Hook, prefix string, before func()) {
	t.Helper()
	for deadline := time.Now().Add(bound); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, e := range logs.AllEntries() {
			if strings.HasPrefix(e.Message, prefix) {
				return
			}
		}
	}
	before()
	t.Fatalf("no %q in the log", prefix)
}
