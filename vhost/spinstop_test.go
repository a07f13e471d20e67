package vhost_test

import (
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// gatedDisk is a memDisk whose reads wait for the test: entered says one
// has started, open lets them all finish.
type gatedDisk struct {
	*memDisk
	entered chan struct{}
	open    chan struct{}
}

func (d *gatedDisk) ReadV(lba uint64, iov [][]byte) error {
	select {
	case d.entered <- struct{}{}:
	default:
	}
	<-d.open
	return d.memDisk.ReadV(lba, iov)
}

// A polling worker (--poll-us) picks a request up while it spins, and
// GET_VRING_BASE stops the ring while that request runs. The returned base
// counts the request, so its completion must be in the used ring the
// driver sees: the worker publishes it on its way out instead of leaving
// the used index behind the base.
func TestGetVringBaseWhileASpinningWorkerRunsARequestPublishesIt(t *testing.T) {
	fdcheck.Check(t)
	disk := &gatedDisk{memDisk: newMemDisk(4<<20, 512), entered: make(chan struct{}, 1), open: make(chan struct{})}
	_, sock := vhosttest.Serve(t, disk, blk.Options{NumQueues: 1},
		vhost.Options{PollDuration: time.Minute})
	d, err := frontend.Connect(sock, frontend.Options{NumQueues: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	q := d.Queues[0]
	// The ring is empty when the worker starts: it drains nothing and
	// spins; the request arrives during the spin.
	time.Sleep(50 * time.Millisecond)
	if err := q.Submit(&frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: make([]byte, 4096)}); err != nil {
		t.Fatal(err)
	}
	q.Kick()
	select {
	case <-disk.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not take the request")
	}
	base := make(chan uint32, 1)
	errs := make(chan error, 1)
	go func() {
		b, err := d.Conn.GetVringBase(0)
		errs <- err
		base <- b
	}()
	// GET_VRING_BASE is in: the worker is told to stop while it runs the
	// read. There is no event to wait for; the stop flag is set before
	// the reply can come, and the reply waits for the read.
	time.Sleep(100 * time.Millisecond)
	close(disk.open)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if b := <-base; b != 1 {
		t.Fatalf("GET_VRING_BASE = %d, want 1", b)
	}
	if used := q.Ring.UsedIdx(); used != 1 {
		t.Fatalf("used index %d after GET_VRING_BASE returned 1: the request's completion was never published", used)
	}
}
