package vhost_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

func quietLogger() *logrus.Logger {
	lg := logrus.New()
	lg.SetLevel(logrus.WarnLevel)
	return lg
}

func TestServeContextShutsDownCleanlyWhenTheContextEnds(t *testing.T) {
	fdcheck.Check(t)
	disk := newMemDisk(1<<20, 512)
	srv := vhost.NewServer(blk.NewBackend(blk.NewDevice(disk, blk.Options{}), disk), vhost.Options{Logger: quietLogger()})
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := vhostuser.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.ServeContext(ctx, l, 5*time.Second) }()

	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xa5}, 4096)
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 8, Data: data}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	cancel() // the front-end is still connected: shutdown must not wait for it to leave
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ServeContext: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeContext did not return after the context ended")
	}
	d.Close()
	if disk.flushes.Load() == 0 {
		t.Error("shutdown did not flush the disk")
	}
	if !bytes.Equal(disk.bytes(8*512, 4096), data) {
		t.Error("the write before shutdown is not on the disk")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind: %v", err)
	}
}

func TestServeContextReturnsAnAcceptErrorAfterShuttingDown(t *testing.T) {
	fdcheck.Check(t)
	disk := newMemDisk(1<<20, 512)
	srv := vhost.NewServer(blk.NewBackend(blk.NewDevice(disk, blk.Options{}), disk), vhost.Options{Logger: quietLogger()})
	l, err := vhostuser.Listen(filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.Close() // Serve's first Accept fails
	err = srv.ServeContext(context.Background(), l, time.Second)
	if err == nil || errors.Is(err, vhost.ErrServerClosed) {
		t.Fatalf("ServeContext on a closed listener = %v, want the accept error", err)
	}
	if disk.flushes.Load() == 0 {
		t.Error("the server was not shut down (no flush) after the accept error")
	}
}

// TestServeAfterShutdownClosesTheListener: a Serve that starts only after
// Shutdown (ServeContext's goroutine losing the race with a signal at
// startup) closes its listener, so neither the fd nor the socket file
// outlives the server.
func TestServeAfterShutdownClosesTheListener(t *testing.T) {
	fdcheck.Check(t)
	disk := newMemDisk(1<<20, 512)
	srv := vhost.NewServer(blk.NewBackend(blk.NewDevice(disk, blk.Options{}), disk), vhost.Options{Logger: quietLogger()})
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := vhostuser.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(l); !errors.Is(err, vhost.ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v, want ErrServerClosed", err)
	}
	if err := l.SetDeadline(time.Now()); err == nil {
		t.Error("the listener is still open")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind: %v", err)
	}
}
