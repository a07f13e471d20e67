// Package vhosttest runs nvblk's vhost-user-blk server inside a test, on a
// socket in the test's temporary directory, and stops it when the test
// ends. A BTT is served as `nvblk serve` serves it, through
// internal/blkserve, so the tests of several packages (vhost, the
// conformance suite, the load generator, the command) run the production
// wiring; net/http/httptest is the model.
package vhosttest

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser"
)

// shutdownTimeout bounds the Shutdown at the end of a test: a server that
// cannot stop within it is a hang worth failing on, not waiting out.
const shutdownTimeout = 10 * time.Second

// BTTOptions describe a fresh BTT image.
type BTTOptions struct {
	Size       int64           // of the pmem file, in bytes
	LBASize    uint32          // as btt.FormatOptions.LBASize
	Durability pmem.Durability // as pmem.Options.Durability
}

// NewBTT creates a pmem file at path, formats it as a BTT and opens it.
// Both are closed when the test ends; closing them sooner is fine.
func NewBTT(tb testing.TB, path string, o BTTOptions) (*pmem.Medium, *btt.Device) {
	tb.Helper()
	m, err := pmem.Open(path, pmem.Options{Create: true, Size: o.Size, Durability: o.Durability})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	if err := btt.Format(m, btt.FormatOptions{LBASize: o.LBASize}); err != nil {
		tb.Fatal(err)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	// Registered after the medium's: cleanups run last-in first-out, and
	// the device flushes through the mapping as it closes.
	tb.Cleanup(func() { closeBTT(tb, d) })
	return m, d
}

// closeBTT closes d, failing the test instead of hanging it when Close
// waits on a lane nobody gives back (a queue that leaks its lane). The
// medium may then be closed under the stuck Close: its Flush then fails
// rather than touching the unmapped pages.
func closeBTT(tb testing.TB, d *btt.Device) {
	closed := make(chan struct{})
	go func() { d.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(shutdownTimeout):
		tb.Errorf("closing the BTT: a lane is still held after %v", shutdownTimeout)
	}
}

// Serve serves disk as a virtio-blk device with the given options and
// returns the server and its socket. It is not the production wiring:
// it is for disks that are not a BTT (fakes that misbehave or count);
// a test serving a btt.Device uses ServeDevice or ServeBTT, which build
// the server as `nvblk serve` does. When the test ends it shuts the
// server down and fails the test if that takes too long or Serve returns
// anything but vhost.ErrServerClosed. A test may shut it down itself
// first.
func Serve(tb testing.TB, disk blk.Disk, dev blk.Options, o vhost.Options) (*vhost.Server, string) {
	tb.Helper()
	srv := vhost.NewServer(blk.NewBackend(blk.NewDevice(disk, dev), disk), o)
	return srv, serve(tb, srv)
}

// ServeDevice serves the open BTT d, whose medium is in durability mode
// dur, as `nvblk serve` does (blkserve.New: a BTT lane per running queue,
// write-through unless dur is DurabilityFlush), and returns the server
// and its socket. It shuts the server down when the test ends, as Serve
// does. Register d's Close before calling it: cleanups run last-in
// first-out, and Close waits for the lanes the running queues hold.
func ServeDevice(tb testing.TB, d *btt.Device, dur pmem.Durability, c blkserve.Config) (*vhost.Server, string) {
	tb.Helper()
	s, sock := ServeServed(tb, d, dur, c)
	return s.Server, sock
}

// ServeServed is ServeDevice returning the whole blkserve.Served (its
// Move, ServeIncoming and Grow).
func ServeServed(tb testing.TB, d *btt.Device, dur pmem.Durability, c blkserve.Config) (*blkserve.Served, string) {
	tb.Helper()
	s, err := blkserve.New(d, dur, c)
	if err != nil {
		tb.Fatal(err)
	}
	return s, serve(tb, s.Server)
}

// serve runs srv on a fresh socket in the test's directory until the test
// ends.
func serve(tb testing.TB, srv *vhost.Server) string {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "vhost.sock")
	l, err := vhostuser.Listen(sock)
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, vhost.ErrServerClosed) {
			tb.Errorf("Serve: %v", err)
		}
	})
	return sock
}

// Options describe a served BTT: the image, and how it is served.
type Options struct {
	BTTOptions
	Config blkserve.Config
}

// Served is a BTT on a fresh pmem file, served on a socket.
type Served struct {
	Sock   string
	Image  string // the pmem file
	Dev    *btt.Device
	Server *vhost.Server
}

// ServeBTT formats a fresh BTT image and serves it with ServeDevice. When
// the test ends the server is shut down, then the BTT and its medium are
// closed.
func ServeBTT(tb testing.TB, o Options) *Served {
	tb.Helper()
	img := filepath.Join(tb.TempDir(), "disk.img")
	m, d := NewBTT(tb, img, o.BTTOptions)
	srv, sock := ServeDevice(tb, d, m.Durability(), o.Config)
	return &Served{Sock: sock, Image: img, Dev: d, Server: srv}
}
