package blkserve_test

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// formatImage makes a closed 20 MiB BTT image in dir.
func formatImage(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	m, err := pmem.Open(path, pmem.Options{Create: true, Size: 20 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := btt.Format(m, btt.FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	return path
}

func newTestSet(t *testing.T, max int) *blkserve.Set {
	t.Helper()
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	s := blkserve.NewSet(blkserve.SetConfig{
		MaxDisks: max,
		Open: func(s blkserve.Spec) (*pmem.Medium, *btt.Device, error) {
			m, err := pmem.Open(s.Image, pmem.Options{ReadOnly: s.ReadOnly, Durability: s.Durability})
			if err != nil {
				return nil, nil, err
			}
			d, err := btt.Open(m, btt.Options{ReadOnly: s.ReadOnly})
			if err != nil {
				m.Close()
				return nil, nil, err
			}
			return m, d, nil
		},
		Listen: func(path string) (net.Listener, error) { return vhostuser.Listen(path) },
		Server: vhost.Options{Logger: lg},
		Grace:  5 * time.Second,
	})
	t.Cleanup(func() { s.Close() })
	return s
}

func spec(dir, name, img string) blkserve.Spec {
	return blkserve.Spec{Name: name, Image: img, Socket: filepath.Join(dir, name+".sock"), NumQueues: 1}
}

func TestSetRefusesADiskOverItsLimit(t *testing.T) {
	fdcheck.Check(t)
	dir := t.TempDir()
	s := newTestSet(t, 2)
	for _, n := range []string{"a", "b"} {
		if _, err := s.Add(spec(dir, n, formatImage(t, dir, n+".img"))); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Add(spec(dir, "c", formatImage(t, dir, "c.img")))
	if err == nil || !strings.Contains(err.Error(), "already has 2 disks") {
		t.Fatalf("a third disk over a limit of 2: %v", err)
	}
	if listening(filepath.Join(dir, "c.sock")) {
		t.Error("the refused disk's socket listens")
	}
}

func listening(path string) bool {
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
	}
	return err == nil
}

func TestSetRemoveRefusesAnAttachedDiskUnlessForced(t *testing.T) {
	fdcheck.Check(t)
	dir := t.TempDir()
	s := newTestSet(t, 0)
	sp := spec(dir, "a", formatImage(t, dir, "a.img"))
	in, err := s.Add(sp)
	if err != nil {
		t.Fatal(err)
	}
	d, err := frontend.Connect(in.Socket, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := s.Remove(context.Background(), "a", blkserve.RemoveIfDetached); !errors.Is(err, blkserve.ErrAttached) {
		t.Fatalf("remove of an attached disk: %v", err)
	}
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}, ioTimeout); err != nil {
		t.Fatalf("a refused remove dropped the guest: %v", err)
	}
	if err := s.Remove(context.Background(), "a", blkserve.RemoveForce); err != nil {
		t.Fatal(err)
	}
	if len(s.List()) != 0 {
		t.Errorf("list after remove: %+v", s.List())
	}
	// The name, socket and image are free again.
	if _, err := s.Add(sp); err != nil {
		t.Fatalf("adding the removed disk again: %v", err)
	}
}

func TestSetRefusesAddsOnceClosed(t *testing.T) {
	dir := t.TempDir()
	s := newTestSet(t, 0)
	s.Close()
	if _, err := s.Add(spec(dir, "a", formatImage(t, dir, "a.img"))); err == nil || !strings.Contains(err.Error(), "shutting down") {
		t.Fatalf("add after close: %v", err)
	}
}
