package vhost_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
)

// notEventfds are files a front-end could send as a ring's kick, call or
// error fd instead of an eventfd. Each is closed when the test ends.
var notEventfds = []struct {
	name string
	open func(t *testing.T) int
}{
	{"pipe at EOF", func(t *testing.T) int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		unix.Close(p[1]) // a read returns EOF at once, forever
		t.Cleanup(func() { unix.Close(p[0]) })
		return p[0]
	}},
	{"pipe write end", func(t *testing.T) int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
		return p[1]
	}},
	{"memfd", func(t *testing.T) int {
		fd, err := unix.MemfdCreate("not-an-eventfd", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}},
	{"/dev/null", func(t *testing.T) int {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return int(f.Fd())
	}},
	{"unix socket", func(t *testing.T) int {
		l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		f, err := l.(*net.UnixListener).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return int(f.Fd())
	}},
	{"timerfd", func(t *testing.T) int {
		// An anonymous inode like an eventfd, but not one.
		fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}},
}

// TestVringFDsMustBeEventfds: a kick, call or error fd that is not an
// eventfd is refused with a non-zero REPLY_ACK and closed (startEnv counts
// fds), and a running ring goes on with the eventfds it had. (A pipe at
// EOF as the kick fd made the worker wake and warn ~900 times a second.)
func TestVringFDsMustBeEventfds(t *testing.T) {
	for _, req := range []vhostuser.Request{vhostuser.ReqSetVringKick, vhostuser.ReqSetVringCall, vhostuser.ReqSetVringErr} {
		for _, f := range notEventfds {
			t.Run(req.String()+"/"+f.name, func(t *testing.T) {
				e := startEnv(t, envOpts{queues: 1})
				d := connect(t, e, frontend.Options{})
				readWrite(t, d.Queues[0], 0)
				if err := d.Conn.SetVringFD(req, 0, f.open(t)); !errors.Is(err, frontend.ErrNack) {
					t.Fatalf("%v with a %s: %v, want a nack", req, f.name, err)
				}
				readWrite(t, d.Queues[0], 8)
				good := map[vhostuser.Request]int{vhostuser.ReqSetVringKick: d.Queues[0].Ring.Kick, vhostuser.ReqSetVringCall: d.Queues[0].Ring.Call,
					vhostuser.ReqSetVringErr: eventfd(t)}[req]
				if err := d.Conn.SetVringFD(req, 0, good); err != nil {
					t.Fatalf("%v with an eventfd after the refusal: %v", req, err)
				}
				readWrite(t, d.Queues[0], 16)
			})
		}
	}
}

// TestRingsSetUpBeforeMemoryStartWhenItComes: a front-end may set up,
// kick and enable its rings before it sends any memory; the rings start
// when the memory arrives, by SET_MEM_TABLE or ADD_MEM_REG.
func TestRingsSetUpBeforeMemoryStartWhenItComes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		memSlots bool
	}{
		{"SET_MEM_TABLE", false},
		{"ADD_MEM_REG", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOpts{queues: 2})
			d := connect(t, e, frontend.Options{NumQueues: 2, Regions: 2, RegionPerQueue: true, MemoryLast: true, MemSlots: tc.memSlots})
			readWrite(t, d.Queues[0], 0)
			readWrite(t, d.Queues[1], 8)
		})
	}
}
