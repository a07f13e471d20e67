package blkserve_test

import (
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

const (
	ioTimeout = 5 * time.Second
	// notFreeFor is how long a lane must stay taken to count as held: a
	// request's lane from the shared pool is back within microseconds.
	notFreeFor = 200 * time.Millisecond
)

// serveBTT serves a fresh 4 KiB-sector BTT, as `nvblk serve` would, with
// a medium in durability mode dur.
func serveBTT(t *testing.T, dur pmem.Durability, queues uint16) *vhosttest.Served {
	t.Helper()
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	return vhosttest.ServeBTT(t, vhosttest.Options{
		BTTOptions: vhosttest.BTTOptions{Size: 20 << 20, LBASize: 4096, Durability: dur},
		Config:     blkserve.Config{NumQueues: queues, Server: vhost.Options{Logger: lg}},
	})
}

// acquireWithin returns a lane of d if one comes free within wait, else
// nil. A lane that comes free later is released at once, so no goroutine
// is left holding one when d closes.
func acquireWithin(d *btt.Device, wait time.Duration) *btt.Lane {
	got := make(chan *btt.Lane) // unbuffered: a lane is either taken or released
	abandoned := make(chan struct{})
	go func() {
		ln, err := d.AcquireLane()
		if err != nil {
			return
		}
		select {
		case got <- ln:
		case <-abandoned:
			ln.Release()
		}
	}()
	select {
	case ln := <-got:
		return ln
	case <-time.After(wait):
		close(abandoned)
		return nil
	}
}

// holdAllLanesButOne takes every lane of a fresh BTT except one, until the
// test ends, and checks that exactly one is left: a queue that holds a
// lane then leaves none.
func holdAllLanesButOne(t *testing.T, d *btt.Device) {
	t.Helper()
	for range btt.DefaultNFree - 1 {
		ln := acquireWithin(d, ioTimeout)
		if ln == nil {
			t.Fatalf("a fresh BTT has fewer than %d lanes", btt.DefaultNFree)
		}
		t.Cleanup(ln.Release)
	}
	ln := acquireWithin(d, ioTimeout)
	if ln == nil {
		t.Fatalf("a fresh BTT has fewer than %d lanes", btt.DefaultNFree)
	}
	ln.Release()
}

// connect starts a front-end's one queue and runs a write on it, so the
// queue's worker is running when it returns.
func connect(t *testing.T, sock string) *frontend.Device {
	t.Helper()
	fe, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fe.Close() })
	w := &frontend.Request{Type: virtio.BlkTOut, Data: make([]byte, 4096)}
	if err := fe.Queues[0].Do(w, ioTimeout); err != nil {
		t.Fatal(err)
	}
	return fe
}

func TestServedQueueHoldsABTTLane(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilityFlush, 1)
	holdAllLanesButOne(t, s.Dev)

	connect(t, s.Sock)
	if ln := acquireWithin(s.Dev, notFreeFor); ln != nil {
		ln.Release()
		t.Fatal("the last lane is free while a queue runs: the queue does not hold a lane of its own")
	}
}

func TestServedQueueGivesItsLaneBackWhenItsRingStops(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilityFlush, 1)
	holdAllLanesButOne(t, s.Dev)

	fe := connect(t, s.Sock)
	if _, err := fe.Stop(); err != nil { // GET_VRING_BASE, as QEMU stops a ring
		t.Fatal(err)
	}
	ln := acquireWithin(s.Dev, ioTimeout)
	if ln == nil {
		t.Fatal("the stopped queue's lane did not come back")
	}
	ln.Release()
}

func TestServedQueueGivesItsLaneBackWhenTheFrontEndHangsUp(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilityFlush, 1)
	holdAllLanesButOne(t, s.Dev)

	fe := connect(t, s.Sock)
	fe.Conn.Close() // no GET_VRING_BASE: QEMU killed
	ln := acquireWithin(s.Dev, ioTimeout)
	if ln == nil {
		t.Fatal("the lane of a queue whose front-end hung up did not come back")
	}
	ln.Release()
}

func TestServedBTTOnAFlushMediumOffersFlush(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilityFlush, 1)

	fe := connect(t, s.Sock)
	if fe.Features&virtio.BlkFFlush == 0 {
		t.Fatal("FLUSH not offered, but writes on a flush medium are durable only once flushed")
	}
}

func TestServedBTTOnASyncMediumIsWriteThrough(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilitySync, 1)

	fe := connect(t, s.Sock)
	if fe.Features&virtio.BlkFFlush != 0 {
		t.Fatal("FLUSH offered, but every write on a sync medium is durable when it completes")
	}
}

func TestNewRefusesADurabilityNotYetResolved(t *testing.T) {
	fdcheck.Check(t)
	_, d := vhosttest.NewBTT(t, filepath.Join(t.TempDir(), "disk.img"), vhosttest.BTTOptions{Size: 20 << 20})

	if _, err := blkserve.New(d, pmem.DurabilityAuto, blkserve.Config{}); err == nil {
		t.Fatal("New accepted DurabilityAuto, which does not say whether writes are durable at once")
	}
}
