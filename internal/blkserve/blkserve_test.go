package blkserve_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser"
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

// holdAllLanesButTwo takes every lane of a fresh BTT except two, until
// the test ends: a queue that holds a lane then leaves exactly one, the
// lane the device keeps for I/O that holds none.
func holdAllLanesButTwo(t *testing.T, d *btt.Device) {
	t.Helper()
	for range btt.DefaultNFree - 2 {
		ln := acquireWithin(d, ioTimeout)
		if ln == nil {
			t.Fatalf("a fresh BTT has fewer than %d lanes", btt.DefaultNFree)
		}
		t.Cleanup(ln.Release)
	}
}

// lanesFree counts the lanes of d that can be taken now, up to max, and
// gives them back.
func lanesFree(d *btt.Device, max int) int {
	var got []*btt.Lane
	defer func() {
		for _, ln := range got {
			ln.Release()
		}
	}()
	for len(got) < max {
		ln := acquireWithin(d, notFreeFor)
		if ln == nil {
			break
		}
		got = append(got, ln)
	}
	return len(got)
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
	holdAllLanesButTwo(t, s.Dev)

	connect(t, s.Sock)
	if n := lanesFree(s.Dev, 2); n != 1 {
		t.Fatalf("%d of the last two lanes free while a queue runs, want 1: the queue holds one, the device keeps the other", n)
	}
}

// On an image with lanes to spare a queue also holds its read helper's
// lane, which copies part of the queue's large reads on another core.
func TestServedQueueOnAFreshImageHoldsASecondLaneForItsReadHelper(t *testing.T) {
	fdcheck.Check(t)
	// Helpers need more than one CPU to run on, which a one-CPU box can
	// still be told it has.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 2)))
	s := serveBTT(t, pmem.DurabilityFlush, 1)

	fe := connect(t, s.Sock)
	if n := lanesFree(s.Dev, btt.DefaultNFree); n != btt.DefaultNFree-2 {
		t.Fatalf("%d of %d lanes free while a queue runs, want %d: the queue's and its read helper's are held", n, btt.DefaultNFree, btt.DefaultNFree-2)
	}
	r := &frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 128<<10)}
	if err := fe.Queues[0].Do(r, ioTimeout); err != nil || r.Status != virtio.BlkSOK {
		t.Fatalf("128 KiB read: %v, status %d", err, r.Status)
	}
	if _, err := fe.Stop(); err != nil {
		t.Fatal(err)
	}
	waitLanesFree(t, s.Dev, btt.DefaultNFree, "the stopped queue's lanes did not all come back")
}

// A serve offering more queues than the lanes could give each a helper
// too keeps every lane for the queues: none gets a helper.
func TestServedQueuesGetNoReadHelperWhenTheirLanesCouldNotAllHaveOne(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilityFlush, btt.DefaultNFree/2)

	connect(t, s.Sock)
	if n := lanesFree(s.Dev, btt.DefaultNFree); n != btt.DefaultNFree-1 {
		t.Fatalf("%d of %d lanes free while one of %d offered queues runs, want %d: its own lane only", n, btt.DefaultNFree, btt.DefaultNFree/2, btt.DefaultNFree-1)
	}
}

// On one CPU a helper could only take turns with its queue's worker: a
// serve started with GOMAXPROCS 1 gives none.
func TestServedQueueGetsNoReadHelperOnOneCPU(t *testing.T) {
	fdcheck.Check(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	s := serveBTT(t, pmem.DurabilityFlush, 1)

	connect(t, s.Sock)
	if n := lanesFree(s.Dev, btt.DefaultNFree); n != btt.DefaultNFree-1 {
		t.Fatalf("%d of %d lanes free while a queue runs with GOMAXPROCS 1, want %d: its own lane only", n, btt.DefaultNFree, btt.DefaultNFree-1)
	}
}

func TestServedQueueGivesItsLaneBackWhenItsRingStops(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilityFlush, 1)
	holdAllLanesButTwo(t, s.Dev)

	fe := connect(t, s.Sock)
	if _, err := fe.Stop(); err != nil { // GET_VRING_BASE, as QEMU stops a ring
		t.Fatal(err)
	}
	waitLanesFree(t, s.Dev, 2, "the stopped queue's lane did not come back")
}

func TestServedQueueGivesItsLaneBackWhenTheFrontEndHangsUp(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilityFlush, 1)
	holdAllLanesButTwo(t, s.Dev)

	fe := connect(t, s.Sock)
	fe.Conn.Close() // no GET_VRING_BASE: QEMU killed
	waitLanesFree(t, s.Dev, 2, "the lane of a queue whose front-end hung up did not come back")
}

// waitLanesFree fails the test unless n lanes of d can be taken within
// ioTimeout (the session lets go of its queue's lane asynchronously).
func waitLanesFree(t *testing.T, d *btt.Device, n int, why string) {
	t.Helper()
	var got []*btt.Lane
	defer func() {
		for _, ln := range got {
			ln.Release()
		}
	}()
	for len(got) < n {
		ln := acquireWithin(d, ioTimeout)
		if ln == nil {
			t.Fatal(why)
		}
		got = append(got, ln)
	}
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

// An image may have as few lanes as it has queues (Open takes any nfree
// from 1), and the device keeps one lane back for I/O that holds none: of
// two lanes, only one is a queue's own. A queue that cannot have a lane
// of its own must start anyway, at once, and serve on lanes taken per
// request; nothing may wait on a lane under the session lock, where a
// second queue's start used to block forever, and Shutdown with it.
func TestTwoQueuesOnAnImageWithTwoLanesBothServeAndShutdownReturns(t *testing.T) {
	fdcheck.Check(t)
	m, err := pmem.Open(filepath.Join(t.TempDir(), "disk.img"), pmem.Options{Create: true, Size: 20 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := btt.Format(m, btt.FormatOptions{LBASize: 4096, NFree: 2}); err != nil {
		t.Fatal(err)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if blkserve.Lanes(d) != 2 {
		t.Fatalf("an image of nfree 2 has %d lanes", blkserve.Lanes(d))
	}
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	s, err := blkserve.New(d, m.Durability(), blkserve.Config{NumQueues: 2, Server: vhost.Options{Logger: lg}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	l, err := vhostuser.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Server.Serve(l) }()

	// Every wait is bounded: the bug this guards against is a hang.
	connected := make(chan error, 1)
	var fe *frontend.Device
	go func() {
		var err error
		fe, err = frontend.Connect(sock, frontend.Options{NumQueues: 2})
		connected <- err
	}()
	select {
	case err := <-connected:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(ioTimeout):
		t.Fatalf("starting two queues on a BTT of two lanes did not finish within %v", ioTimeout)
	}
	defer fe.Close()
	for q, queue := range fe.Queues {
		data := bytes.Repeat([]byte{byte(q + 1)}, 4096)
		sector := uint64(q * 8)
		if err := queue.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, ioTimeout); err != nil {
			t.Fatalf("queue %d: write: %v", q, err)
		}
		got := &frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: make([]byte, 4096)}
		if err := queue.Do(got, ioTimeout); err != nil || got.Status != virtio.BlkSOK || !bytes.Equal(got.Data, data) {
			t.Fatalf("queue %d: read back: err %v, status %d, same data %v", q, err, got.Status, bytes.Equal(got.Data, data))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if err := s.Server.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-served:
		if !errors.Is(err, vhost.ErrServerClosed) {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return after Shutdown")
	}
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("closing the BTT: a queue still holds its lane")
	}
}

// openBTT formats a 20 MiB image with nfree free blocks per arena and opens
// it; both are closed when the test ends.
func openBTT(t *testing.T, nfree uint32) *btt.Device {
	t.Helper()
	m, err := pmem.Open(filepath.Join(t.TempDir(), "disk.img"), pmem.Options{Create: true, Size: 20 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := btt.Format(m, btt.FormatOptions{LBASize: 4096, NFree: nfree}); err != nil {
		t.Fatal(err)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// A queue per lane is the most New serves: one more is refused, and the
// error names the image's lanes, whether a fresh image's 256 or the few of
// one formatted with fewer free blocks.
func TestNewRefusesMoreQueuesThanTheBTTHasLanes(t *testing.T) {
	cases := []struct {
		name  string
		nfree uint32
		lanes int
	}{
		{"a fresh image", btt.DefaultNFree, blkserve.MaxQueues},
		{"an image of four free blocks", 4, 4},
		{"more free blocks than the lanes a BTT uses", 512, blkserve.MaxQueues},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fdcheck.Check(t)
			d := openBTT(t, c.nfree)
			if got := blkserve.Lanes(d); got != c.lanes {
				t.Fatalf("Lanes = %d, want %d", got, c.lanes)
			}
			if _, err := blkserve.New(d, pmem.DurabilityFlush, blkserve.Config{NumQueues: uint16(c.lanes)}); err != nil {
				t.Fatalf("a queue per lane: %v", err)
			}
			_, err := blkserve.New(d, pmem.DurabilityFlush, blkserve.Config{NumQueues: uint16(c.lanes + 1)})
			if !errors.Is(err, blkserve.ErrTooManyQueues) || !strings.Contains(err.Error(), fmt.Sprintf("(%d)", c.lanes)) {
				t.Fatalf("%d queues on %d lanes: %v, want ErrTooManyQueues naming %d", c.lanes+1, c.lanes, err, c.lanes)
			}
		})
	}
}

// QEMU's vhost-user-blk-pci asks for one queue per vCPU by default: a
// front-end wanting a queue per lane of a fresh BTT (far more than any
// vCPU count here, and within QEMU's VIRTIO_QUEUE_MAX) attaches, starts
// them all, and the last one serves I/O.
func TestAFrontEndWithAQueuePerLaneServesOnItsLastQueue(t *testing.T) {
	fdcheck.Check(t)
	s := serveBTT(t, pmem.DurabilityFlush, blkserve.MaxQueues)
	fe, err := frontend.Connect(s.Sock, frontend.Options{NumQueues: blkserve.MaxQueues, QueueSize: 8, MaxIO: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fe.Close() })
	if n := binary.LittleEndian.Uint16(fe.Config[virtio.BlkCfgNumQueues:]); n != blkserve.MaxQueues {
		t.Fatalf("config space num_queues %d, want %d", n, blkserve.MaxQueues)
	}
	last := fe.Queues[len(fe.Queues)-1]
	data := bytes.Repeat([]byte{0x5a}, 4096)
	if err := last.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 8, Data: data}, ioTimeout); err != nil {
		t.Fatalf("write on queue %d: %v", len(fe.Queues)-1, err)
	}
	got := &frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: make([]byte, 4096)}
	if err := fe.Queues[0].Do(got, ioTimeout); err != nil || !bytes.Equal(got.Data, data) {
		t.Fatalf("read back on queue 0: err %v, same data %v", err, bytes.Equal(got.Data, data))
	}
	st := s.Server.Stats()
	if n := len(st.Queues); n != blkserve.MaxQueues {
		t.Fatalf("stats list %d queues, want %d", n, blkserve.MaxQueues)
	}
	if q := st.Queues[blkserve.MaxQueues-1]; !q.Running || q.Writes != 1 {
		t.Fatalf("last queue's stats: %+v, want running with one write", q)
	}
}
