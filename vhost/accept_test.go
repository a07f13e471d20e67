package vhost_test

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser/frontend"
)

// TestServeOutlivesRunningOutOfFDs: a front-end connects while the process
// has no file descriptor left (RLIMIT_NOFILE lowered to what is open), so
// accepting it fails with EMFILE. Serve waits and retries instead of
// returning; once descriptors are available again, that front-end and the
// next are served.
func TestServeOutlivesRunningOutOfFDs(t *testing.T) {
	fdcheck.Check(t)
	disk := newMemDisk(1<<20, 512)
	lg := logrus.New()
	lg.SetLevel(logrus.WarnLevel)
	logs := logtest.NewLocal(lg)
	_, sock := vhosttest.Serve(t, disk, blk.Options{}, vhost.Options{Logger: lg})

	// The front-end's socket is made while descriptors remain; it
	// connects once none do.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	restore := fdcheck.Exhaust(t)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		restore()
		t.Fatal(err)
	}
	// The failure is logged when Serve retries; a Serve that gave up
	// logs nothing (vhosttest reports what it returned).
	waitLog(t, logs, "vhost: accept failed", restore)
	restore()

	// The pending front-end is accepted and served...
	f := os.NewFile(uintptr(fd), "front-end")
	fd = -1
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c := frontend.NewConn(nc.(*net.UnixConn))
	c.Timeout = ioTimeout
	d, err := frontend.Start(c, frontend.Options{})
	if err != nil {
		c.Close()
		t.Fatalf("the front-end that connected while fds ran out: %v", err)
	}
	readWrite(t, d.Queues[0], 0)
	d.Close()
	// ...and so is the next.
	d2, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	readWrite(t, d2.Queues[0], 8)
}

// waitLog waits for a log entry whose message starts with prefix; on
// failure it runs before (restoring the fd limit, say) and fails t.
func waitLog(t *testing.T, logs *logtest.Hook, prefix string, before func()) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, e := range logs.AllEntries() {
			if strings.HasPrefix(e.Message, prefix) {
				return
			}
		}
	}
	before()
	t.Fatalf("no %q in the log", prefix)
}
