// Package fdcheck lets a test prove it closes every file descriptor it
// opens: the project's rule is that each fd has one owner that closes it,
// and tests count descriptors before and after.
package fdcheck

import (
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// settle is how long a test's goroutines get to close what they hold after
// the test body returns (a server's session, a worker's eventfd).
const settle = 3 * time.Second

var warmOnce sync.Once

// Open counts this process's open descriptors.
func Open(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Check fails t if it ends with more open descriptors than it started
// with. Call it first in the test: cleanups run last-in first-out, so the
// count is taken after every other cleanup has run.
func Check(t testing.TB) {
	t.Helper()
	warmOnce.Do(func() {
		// The runtime's poller and the like open fds once per process.
		l, err := net.Listen("unix", filepath.Join(t.TempDir(), "warm"))
		if err == nil {
			l.Close()
		}
	})
	before := Open(t)
	t.Cleanup(func() {
		for deadline := time.Now().Add(settle); ; time.Sleep(10 * time.Millisecond) {
			after := Open(t)
			if after <= before {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("fd leak: %d open before, %d after", before, after)
				return
			}
		}
	})
}

// Exhaust lowers the soft RLIMIT_NOFILE to the lowest free descriptor
// number, so that no new descriptor can be made, and returns a function
// that puts the limit back (also run when the test ends): the real way to
// make accept fail with EMFILE.
func Exhaust(t testing.TB) (restore func()) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	free, err := unix.Dup(0) // the lowest free number
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(free)
	low := old
	low.Cur = uint64(free)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	done := false
	restore = func() {
		if done {
			return
		}
		done = true
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("restoring RLIMIT_NOFILE: %v", err)
		}
	}
	t.Cleanup(restore)
	return restore
}
