package diskmove

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memDisk is a disk in memory whose sectors are each written whole.
type memDisk struct {
	ss   uint32
	mu   sync.RWMutex // guards data
	data []byte
}

func newMemDisk(sectors uint64, ss uint32) *memDisk {
	return &memDisk{ss: ss, data: make([]byte, sectors*uint64(ss))}
}

func (d *memDisk) ReadV(lba uint64, iov [][]byte) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	off := lba * uint64(d.ss)
	for _, b := range iov {
		if off+uint64(len(b)) > uint64(len(d.data)) {
			return errors.New("read past the end")
		}
		off += uint64(copy(b, d.data[off:]))
	}
	return nil
}

func (d *memDisk) WriteV(lba uint64, iov [][]byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	off := lba * uint64(d.ss)
	for _, b := range iov {
		if off+uint64(len(b)) > uint64(len(d.data)) {
			return errors.New("write past the end")
		}
		off += uint64(copy(d.data[off:], b))
	}
	return nil
}

func (d *memDisk) WriteZeroes(lba, n uint64) error {
	return d.WriteV(lba, [][]byte{make([]byte, n*uint64(d.ss))})
}
func (d *memDisk) Flush() error       { return nil }
func (d *memDisk) SectorSize() uint32 { return d.ss }
func (d *memDisk) NumSectors() uint64 { return uint64(len(d.data)) / uint64(d.ss) }
func (d *memDisk) ReadOnly() bool     { return false }
func (d *memDisk) bytes() []byte      { d.mu.RLock(); defer d.mu.RUnlock(); return bytes.Clone(d.data) }
func (d *memDisk) WriteAt(p []byte, off int64) (int, error) {
	return len(p), d.WriteV(uint64(off)/uint64(d.ss), [][]byte{p})
}
func (d *memDisk) WriteZeroes2(off, n int64) error {
	return d.WriteZeroes(uint64(off)/uint64(d.ss), uint64(n)/uint64(d.ss))
}

// memDest is a memDisk as a Destination, counting what it is sent.
type memDest struct {
	*memDisk
	writes, zeroes, flushes atomic.Int64
	slow                    time.Duration
}

func (d *memDest) WriteAt(p []byte, off int64) (int, error) {
	d.writes.Add(1)
	time.Sleep(d.slow)
	return d.memDisk.WriteAt(p, off)
}
func (d *memDest) WriteZeroes(off, n int64) error {
	d.zeroes.Add(1)
	return d.memDisk.WriteZeroes2(off, n)
}
func (d *memDest) Flush() error { d.flushes.Add(1); return nil }

func sector(ss uint32, lba, seq uint64) []byte {
	b := make([]byte, ss)
	for i := 0; i+16 <= len(b); i += 16 {
		binary.LittleEndian.PutUint64(b[i:], lba)
		binary.LittleEndian.PutUint64(b[i+8:], seq)
	}
	return b
}

func TestADiskMovesWhileItsGuestWritesAndTheDestinationEndsEqualAtCutover(t *testing.T) {
	const sectors, ss = 4096, 512
	src := newMemDisk(sectors, ss)
	for lba := uint64(0); lba < sectors; lba += 3 { // a third written, the rest zero
		src.WriteV(lba, [][]byte{sector(ss, lba, 0)})
	}
	dst := &memDest{memDisk: newMemDisk(sectors, ss), slow: 20 * time.Microsecond}
	tr := NewTracker()
	queue := tr.Wrap(src)

	// The guest: two writers, some multi-sector writes and zeroings,
	// running until the "front-end" stops them (cutover).
	var stop atomic.Bool
	var stopped atomic.Bool
	var wg sync.WaitGroup
	var acked atomic.Int64
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for seq := uint64(1); !stop.Load(); seq++ {
				lba := r.Uint64N(sectors - 4)
				var err error
				switch r.IntN(8) {
				case 0:
					err = queue.WriteZeroes(lba, 1+r.Uint64N(4))
				case 1:
					err = queue.WriteV(lba, [][]byte{sector(ss, lba, seq), sector(ss, lba+1, seq)})
				default:
					err = queue.WriteV(lba, [][]byte{sector(ss, lba, seq)})
				}
				if err != nil {
					t.Errorf("guest write before cutover: %v", err)
					return
				}
				acked.Add(1)
				// A steady rate, as a migration's guest is throttled
				// to: a guest outrunning the copy never converges.
				time.Sleep(20 * time.Microsecond)
			}
		}()
	}
	var rounds []Round
	st, err := tr.Push(context.Background(), src, dst, Options{
		Parallel: 3, ChunkBytes: 16 << 10, Converged: 64,
		Cutover: func() bool {
			// The guest is stopped once it has written for a while
			// after convergence, as QEMU stops its rings.
			if acked.Load() > 5000 && !stopped.Load() {
				stop.Store(true)
				wg.Wait()
				stopped.Store(true)
			}
			return stopped.Load()
		},
		Progress: func(r Round) { rounds = append(rounds, r) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src.bytes(), dst.bytes()) {
		t.Fatal("the destination differs from the source at cutover")
	}
	if st.Rounds < 3 || st.SectorsSent <= sectors || st.ZeroSectors == 0 || dst.flushes.Load() != 1 {
		t.Errorf("stats %+v, %d flushes: want several rounds, more sectors sent than the disk has, zero runs, one flush", st, dst.flushes.Load())
	}
	if len(rounds) == 0 || !rounds[len(rounds)-1].Cutover {
		t.Errorf("rounds %+v: want the last one the cutover", rounds)
	}
	t.Logf("%d guest writes; %d rounds, %d sectors sent (%d as zeroes), %d dirty at cutover copied in %v",
		acked.Load(), st.Rounds, st.SectorsSent, st.ZeroSectors, st.CutoverSectors, st.CutoverTook)

	// After cutover the disk here is no longer the disk.
	if err := queue.WriteV(0, [][]byte{sector(ss, 0, 99)}); !errors.Is(err, ErrFenced) {
		t.Fatalf("write after cutover: %v, want ErrFenced", err)
	}
	if err := queue.ReadV(0, [][]byte{make([]byte, ss)}); err != nil {
		t.Fatalf("read after cutover: %v", err)
	}
}

// failingDest fails its nth write.
type failingDest struct {
	*memDest
	n atomic.Int64
}

func (d *failingDest) WriteAt(p []byte, off int64) (int, error) {
	if d.n.Add(-1) == 0 {
		return 0, errors.New("connection reset")
	}
	return d.memDest.WriteAt(p, off)
}

func TestAMoveWhoseDestinationFailsLeavesTheDiskWritableHere(t *testing.T) {
	src := newMemDisk(256, 4096)
	for lba := range uint64(256) {
		src.WriteV(lba, [][]byte{sector(4096, lba, 1)})
	}
	tr := NewTracker()
	dst := &failingDest{memDest: &memDest{memDisk: newMemDisk(256, 4096)}}
	dst.n.Store(3)
	_, err := tr.Push(context.Background(), src, dst, Options{ChunkBytes: 4096, Cutover: func() bool { return true }})
	if err == nil {
		t.Fatal("a move whose destination failed succeeded")
	}
	if err := tr.Wrap(src).WriteV(0, [][]byte{sector(4096, 0, 2)}); err != nil {
		t.Fatalf("write after the failed move: %v", err)
	}
	if tr.dirty.Load() != nil {
		t.Error("the failed move left its dirty map marking writes")
	}
}

func TestAFailureInTheCutoverRoundTakesTheFenceDown(t *testing.T) {
	src := newMemDisk(64, 4096)
	tr := NewTracker()
	queue := tr.Wrap(src)
	dst := &failingDest{memDest: &memDest{memDisk: newMemDisk(64, 4096)}}
	dst.n.Store(1 << 30)
	cut := false
	_, err := tr.Push(context.Background(), src, dst, Options{ChunkBytes: 4096, Cutover: func() bool {
		if !cut {
			// The guest's last write, then its rings stop; the
			// destination breaks on the cutover round's write.
			if err := queue.WriteV(5, [][]byte{sector(4096, 5, 1)}); err != nil {
				t.Fatal(err)
			}
			dst.n.Store(1)
			cut = true
		}
		return true
	}})
	if err == nil {
		t.Fatal("a move whose cutover round failed succeeded")
	}
	if tr.Fenced() {
		t.Fatal("the disk stays fenced after the move failed: its only whole copy cannot be written")
	}
}

func TestASecondMoveOfAMovingDiskIsRefused(t *testing.T) {
	src := newMemDisk(64, 512)
	tr := NewTracker()
	release := make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := tr.Push(context.Background(), src, &memDest{memDisk: newMemDisk(64, 512)},
			Options{Cutover: func() bool { <-release; return true }})
		done <- err
	}()
	for tr.moving.Load() == false {
		time.Sleep(time.Millisecond)
	}
	if _, err := tr.Push(context.Background(), src, &memDest{memDisk: newMemDisk(64, 512)}, Options{Cutover: func() bool { return true }}); !errors.Is(err, ErrMoving) {
		t.Errorf("second move: %v, want ErrMoving", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestAnArrivingDiskHoldsRequestsUntilItHasArrived(t *testing.T) {
	d := newMemDisk(8, 512)
	tr := NewArrivingTracker()
	queue := tr.Wrap(d)
	got := make(chan error, 1)
	go func() { got <- queue.ReadV(0, [][]byte{make([]byte, 512)}) }()
	select {
	case err := <-got:
		t.Fatalf("a read returned (%v) before the disk arrived", err)
	case <-time.After(50 * time.Millisecond):
	}
	tr.Arrived()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if tr.Arriving() {
		t.Error("still arriving after Arrived")
	}
}

func TestARequestHeldLongerThanTheHoldTimeoutFails(t *testing.T) {
	tr := NewArrivingTracker()
	tr.HoldTimeout = 10 * time.Millisecond
	if err := tr.Wrap(newMemDisk(8, 512)).WriteV(0, [][]byte{make([]byte, 512)}); !errors.Is(err, ErrNotArrived) {
		t.Fatalf("write to a disk that never arrives: %v, want ErrNotArrived", err)
	}
}

func TestTheDirtyMapMarksRangesAcrossWordsAndIgnoresSectorsPastTheEnd(t *testing.T) {
	m := newDirtyMap(130)
	m.mark(60, 10)   // across words 0 and 1
	m.mark(128, 100) // past the end: 128, 129 only
	if got := m.count(); got != 12 {
		t.Fatalf("count %d, want 12", got)
	}
	if w := m.take(0); w != 0xf<<60 {
		t.Errorf("word 0 %#x", w)
	}
	if w := m.take(1); w != 0x3f {
		t.Errorf("word 1 %#x", w)
	}
	if w := m.take(2); w != 0x3 {
		t.Errorf("word 2 %#x", w)
	}
	if m.count() != 0 {
		t.Error("take left bits")
	}
}
