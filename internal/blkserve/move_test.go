package blkserve_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/diskmove"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/nbd"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// moveHost is one host of a disk move: a BTT served to vhost-user
// front-ends.
type moveHost struct {
	served *blkserve.Served
	sock   string
	dev    *btt.Device
}

func quiet() logrus.FieldLogger {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	return lg
}

func newMoveHost(t *testing.T, arriving bool) moveHost {
	t.Helper()
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	_, d := vhosttest.NewBTT(t, filepath.Join(t.TempDir(), "disk.img"),
		vhosttest.BTTOptions{Size: 24 << 20, LBASize: 4096, Durability: pmem.DurabilityFlush})
	s, sock := vhosttest.ServeServed(t, d, pmem.DurabilityFlush, blkserve.Config{NumQueues: 1, Arriving: arriving,
		Server: vhost.Options{Logger: lg, Migration: true}})
	return moveHost{served: s, sock: sock, dev: d}
}

func readAll(t *testing.T, d *btt.Device) []byte {
	t.Helper()
	b := make([]byte, d.NumSectors()*uint64(d.SectorSize()))
	if err := d.ReadV(0, [][]byte{b}); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestADiskMovesToAnotherHostWhileItsGuestWrites is a live migration's
// disk half: a front-end writes to the source while Move copies the disk
// to the destination's incoming export; the front-end then stops its rings
// with its dirty log on, as QEMU does at the switch-over, and the
// destination's front-end, held until then, finds every write there.
func TestADiskMovesToAnotherHostWhileItsGuestWrites(t *testing.T) {
	fdcheck.Check(t)
	src, dst := newMoveHost(t, false), newMoveHost(t, true)
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "incoming.sock"))
	if err != nil {
		t.Fatal(err)
	}
	arrived := make(chan error, 1)
	go func() { arrived <- dst.served.ServeIncoming(context.Background(), l, quiet()) }()

	guest, err := frontend.Connect(src.sock, frontend.Options{DirtyLog: true})
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	// The destination's QEMU connects and starts its rings at once: its
	// requests wait for the disk.
	dguest, err := frontend.Connect(dst.sock, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dguest.Close()
	early := make(chan error, 1)
	firstRead := make([]byte, 4096)
	go func() {
		early <- dguest.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: firstRead}, time.Minute)
	}()

	// The guest writes LBA i (sector 8i) with its sequence number until
	// stopped; last[i] is what it wrote last.
	const lbas = 512
	last := make([][]byte, lbas)
	var stop atomic.Bool
	var writes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := 0; !stop.Load(); seq++ {
			lba := (seq * 7) % lbas
			stamp := fmt.Sprintf("lba %4d seq %8d|", lba, seq)
			data := bytes.Repeat([]byte(stamp), 4096/len(stamp)+1)[:4096]
			if err := guest.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: uint64(lba) * 8, Data: data}, ioTimeout); err != nil {
				t.Errorf("guest write %d: %v", seq, err)
				return
			}
			last[lba] = data
			writes.Add(1)
		}
	}()
	if _, err := guest.StartLogging(); err != nil {
		t.Fatal(err)
	}

	var converged atomic.Bool
	moved := make(chan error, 1)
	var st diskmove.Stats
	go func() {
		var err error
		st, err = src.served.Move(context.Background(), nbd.Address{Network: "unix", Addr: l.Addr().String()},
			diskmove.Options{Converged: 64, Progress: func(r diskmove.Round) {
				if r.N > 0 {
					converged.Store(true)
				}
			}})
		moved <- err
	}()
	for !converged.Load() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // rounds of the guest's writes
	select {
	case err := <-early:
		t.Fatalf("the destination answered a read (%v) before the disk arrived", err)
	default:
	}
	// The switch-over: the vCPUs stop, then the rings.
	stop.Store(true)
	wg.Wait()
	base, err := guest.Conn.GetVringBase(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-moved; err != nil {
		t.Fatal(err)
	}
	if err := <-arrived; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d guest writes; moved in %d rounds, %d sectors sent (%d as zeroes), %d at cutover in %v; total %v",
		writes.Load(), st.Rounds, st.SectorsSent, st.ZeroSectors, st.CutoverSectors, st.CutoverTook, st.Total)

	if err := <-early; err != nil {
		t.Fatalf("the destination's held read: %v", err)
	}
	if !bytes.Equal(readAll(t, src.dev), readAll(t, dst.dev)) {
		t.Fatal("the destination's disk differs from the source's at cutover")
	}
	for lba, want := range last {
		if want == nil {
			continue
		}
		got := make([]byte, 4096)
		if err := dguest.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: uint64(lba) * 8, Data: got}, ioTimeout); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("LBA %d on the destination: %.20q, want %.20q", lba, got, want)
		}
	}
	if !bytes.Equal(firstRead, last[1]) && last[1] != nil {
		t.Errorf("the held read of LBA 1 saw %.20q, want the source's last write %.20q", firstRead, last[1])
	}
	// The source's disk is fenced: a guest resumed there (a migration
	// that failed after the switch-over) gets an I/O error, not a write
	// the destination would never see.
	if err := guest.SendRing(guest.Queues[0], base); err != nil {
		t.Fatal(err)
	}
	if err := guest.Conn.SetVringState(vhostuser.ReqSetVringEnable, 0, 1); err != nil {
		t.Fatal(err)
	}
	w := &frontend.Request{Type: virtio.BlkTOut, Sector: 0, Data: make([]byte, 4096)}
	if err := guest.Queues[0].Do(w, ioTimeout); w.Status != virtio.BlkSIOErr {
		t.Fatalf("a write to the source after the move: %v, status %d; want VIRTIO_BLK_S_IOERR", err, w.Status)
	}
}

// TestAnIncomingDiskWaitsForASourceThatLeftMidCopy: a source that hangs
// up without its flush (it died) has not delivered the disk; the next one
// does.
func TestAnIncomingDiskWaitsForASourceThatLeftMidCopy(t *testing.T) {
	dst := newMoveHost(t, true)
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "incoming.sock"))
	if err != nil {
		t.Fatal(err)
	}
	arrived := make(chan error, 1)
	go func() { arrived <- dst.served.ServeIncoming(context.Background(), l, quiet()) }()
	ctx := context.Background()
	c, err := nbd.Dial(ctx, "unix", l.Addr().String(), nbd.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	c.Close() // a clean disconnect, but no flush after the write
	select {
	case err := <-arrived:
		t.Fatalf("the disk arrived (%v) from a source that never flushed", err)
	case <-time.After(100 * time.Millisecond):
	}
	if !dst.served.Tracker.Arriving() {
		t.Fatal("the disk no longer arriving")
	}
	c, err = nbd.Dial(ctx, "unix", l.Addr().String(), nbd.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(bytes.Repeat([]byte{2}, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-arrived; err != nil {
		t.Fatal(err)
	}
	if dst.served.Tracker.Arriving() {
		t.Fatal("still arriving after a complete copy")
	}
}

func TestServeIncomingOfADiskNotArrivingIsRefused(t *testing.T) {
	h := newMoveHost(t, false)
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "incoming.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.served.ServeIncoming(context.Background(), l, quiet()); !errors.Is(err, blkserve.ErrNotArriving) {
		t.Fatalf("ServeIncoming: %v, want ErrNotArriving", err)
	}
}

func TestAMoveToADestinationOfAnotherSizeIsRefusedBeforeAnythingIsSent(t *testing.T) {
	src := newMoveHost(t, false)
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	_, d := vhosttest.NewBTT(t, filepath.Join(t.TempDir(), "small.img"),
		vhosttest.BTTOptions{Size: 20 << 20, LBASize: 4096, Durability: pmem.DurabilityFlush})
	small, err := blkserve.New(d, pmem.DurabilityFlush, blkserve.Config{NumQueues: 1, Arriving: true, Server: vhost.Options{Logger: lg}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "incoming.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- small.ServeIncoming(ctx, l, lg) }()
	_, err = src.served.Move(context.Background(), nbd.Address{Network: "unix", Addr: l.Addr().String()}, diskmove.Options{})
	if err == nil {
		t.Fatal("a move to a smaller disk succeeded")
	}
	t.Log(err)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("ServeIncoming after cancel: %v", err)
	}
	if src.served.Tracker.Fenced() {
		t.Fatal("the refused move fenced the source")
	}
}
