// Package vhosttest runs nvblk's vhost-user-blk server inside a test, as
// `nvblk serve` wires it, on a socket in the test's temporary directory,
// and stops it when the test ends. Tests of several packages (vhost, the
// conformance suite, the load generator, the command) drive a server this
// way; net/http/httptest is the model.
package vhosttest

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/nvblk/nvblk/btt"
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
	tb.Cleanup(func() { d.Close() })
	return m, d
}

// Serve serves disk as a virtio-blk device with the given options and
// returns the server and its socket. When the test ends it shuts the
// server down and fails the test if that takes too long or Serve returns
// anything but vhost.ErrServerClosed. A test may shut it down itself
// first.
func Serve(tb testing.TB, disk blk.Disk, dev blk.Options, o vhost.Options) (*vhost.Server, string) {
	tb.Helper()
	srv := vhost.NewServer(blk.NewBackend(blk.NewDevice(disk, dev), disk), o)
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
	return srv, sock
}

// Options describe a served BTT: the image, the virtio-blk device over it
// and the server.
type Options struct {
	BTTOptions
	Blk    blk.Options
	Server vhost.Options
}

// Served is a BTT on a fresh pmem file, served on a socket.
type Served struct {
	Sock   string
	Image  string // the pmem file
	Dev    *btt.Device
	Server *vhost.Server
}

// ServeBTT formats a fresh BTT image and serves it. When the test ends the
// server is shut down, then the BTT and its medium are closed.
func ServeBTT(tb testing.TB, o Options) *Served {
	tb.Helper()
	img := filepath.Join(tb.TempDir(), "disk.img")
	_, d := NewBTT(tb, img, o.BTTOptions)
	srv, sock := Serve(tb, d, o.Blk, o.Server)
	return &Served{Sock: sock, Image: img, Dev: d, Server: srv}
}
