package btt

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestQueuesOwningLanesWriteAndReadConcurrently(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for q := 0; q < 4; q++ {
		ln, err := d.AcquireLane()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ln.Release()
			buf := make([]byte, 4096)
			for i := 0; i < 50; i++ {
				lba := uint64(q*100 + i%10)
				want := pattern(4096, lba, i)
				if err := ln.WriteV(lba, [][]byte{want}); err != nil {
					errs <- err
					return
				}
				if err := ln.ReadV(lba, [][]byte{buf}); err != nil || !bytes.Equal(buf, want) {
					errs <- errors.Join(err, errors.New("read back differs"))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep.Problems)
	}
}

func TestCloseWaitsForAcquiredLanes(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 512)
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error)
	go func() { closed <- d.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a lane was still held")
	case <-time.After(50 * time.Millisecond):
	}
	// The holder can finish its I/O before it lets go.
	if err := ln.WriteV(1, [][]byte{make([]byte, 512)}); err != nil {
		t.Fatalf("write on a held lane during Close: %v", err)
	}
	ln.Release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if _, err := d.AcquireLane(); !errors.Is(err, ErrClosed) {
		t.Fatalf("acquire after close: %v", err)
	}
}

func TestReleasedLaneRefusesIO(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 512)
	ln, _ := d.AcquireLane()
	ln.Release()
	ln.Release() // a second release is harmless
	if err := ln.ReadV(0, [][]byte{make([]byte, 512)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("read on a released lane: %v", err)
	}
}

func TestLaneOnAReadOnlyDeviceRefusesWrites(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 512)
	d.Close()
	d, err := Open(m, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := d.AcquireLane()
	defer ln.Release()
	if err := ln.WriteV(0, [][]byte{make([]byte, 512)}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write: %v", err)
	}
	if err := ln.WriteV(d.NumSectors(), [][]byte{make([]byte, 512)}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write past the end on a read-only lane: %v", err)
	}
	if err := ln.ReadV(d.NumSectors(), [][]byte{make([]byte, 512)}); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past the end: %v", err)
	}
}

// formatOpenNFree is formatOpen with nfree free blocks (lanes) per arena.
func formatOpenNFree(t *testing.T, nfree uint32) (*memMedium, *Device) {
	t.Helper()
	m := newMemMedium(32 << 20)
	if err := Format(m, FormatOptions{LBASize: 4096, NFree: nfree}); err != nil {
		t.Fatalf("format: %v", err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return m, d
}

func TestTryAcquireLaneKeepsTheLastLaneForIOWithoutALane(t *testing.T) {
	_, d := formatOpenNFree(t, 2)
	ln, err := d.TryAcquireLane()
	if err != nil {
		t.Fatalf("first of two lanes: %v", err)
	}
	defer ln.Release()
	if extra, err := d.TryAcquireLane(); !errors.Is(err, ErrNoLane) {
		if extra != nil {
			extra.Release()
		}
		t.Fatalf("second of two lanes: %v, want ErrNoLane", err)
	}
	// The lane kept back serves the device's own per-call I/O.
	if err := d.WriteV(1, [][]byte{make([]byte, 4096)}); err != nil {
		t.Fatal(err)
	}
}

func TestTryAcquireLaneGivesNoLaneOfADeviceWithOne(t *testing.T) {
	_, d := formatOpenNFree(t, 1)
	if ln, err := d.TryAcquireLane(); !errors.Is(err, ErrNoLane) {
		if ln != nil {
			ln.Release()
		}
		t.Fatalf("TryAcquireLane on a one-lane device: %v, want ErrNoLane", err)
	}
	if err := d.WriteV(1, [][]byte{make([]byte, 4096)}); err != nil {
		t.Fatal(err)
	}
}

func TestTryAcquireLaneDoesNotWaitWhenEveryLaneIsTaken(t *testing.T) {
	_, d := formatOpenNFree(t, 3)
	// AcquireLane may take every lane; TryAcquireLane then fails at once
	// instead of waiting for one.
	for range 3 {
		ln, err := d.AcquireLane()
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Release()
	}
	if ln, err := d.TryAcquireLane(); !errors.Is(err, ErrNoLane) {
		if ln != nil {
			ln.Release()
		}
		t.Fatalf("TryAcquireLane with every lane held: %v, want ErrNoLane", err)
	}
}

func TestTryAcquireLaneGetsALaneBackOnceReleased(t *testing.T) {
	_, d := formatOpenNFree(t, 2)
	ln, err := d.TryAcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	ln.Release()
	if ln, err = d.TryAcquireLane(); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	ln.Release()
}

func TestCloseWaitsForWriteZeroes(t *testing.T) {
	m := &blockingMedium{memMedium: memMedium{buf: make([]byte, 32<<20)}}
	if err := Format(m, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.arm()
	zeroed := make(chan error, 1)
	go func() { zeroed <- d.WriteZeroes(0, 100) }()
	<-m.blocked // WriteZeroes is persisting its map entries
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	// Close flushes once it has every lane; while WriteZeroes holds one it
	// must not get there. Give a Close that does not wait the time to.
	select {
	case <-m.flushed:
	case <-time.After(100 * time.Millisecond):
	}
	m.release()
	if err := <-zeroed; err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if m.flushedWhileBlocked.Load() {
		t.Fatal("Close flushed and returned while WriteZeroes was still storing map entries")
	}
}

// blockingMedium holds the first Persist after arm until release, and
// notes whether a Flush came while it was held.
type blockingMedium struct {
	memMedium
	armed               atomic.Bool
	blocked, unblock    chan struct{}
	flushed             chan struct{}
	holding             atomic.Bool
	flushedWhileBlocked atomic.Bool
}

func (m *blockingMedium) arm() {
	m.blocked, m.unblock, m.flushed = make(chan struct{}), make(chan struct{}), make(chan struct{}, 1)
	m.armed.Store(true)
}

func (m *blockingMedium) release() { close(m.unblock) }

func (m *blockingMedium) Persist(off, n int64) error {
	if m.armed.CompareAndSwap(true, false) {
		m.holding.Store(true)
		close(m.blocked)
		<-m.unblock
		m.holding.Store(false)
	}
	return m.memMedium.Persist(off, n)
}

func (m *blockingMedium) Flush() error {
	if m.holding.Load() {
		m.flushedWhileBlocked.Store(true)
	}
	if m.flushed != nil {
		select {
		case m.flushed <- struct{}{}:
		default:
		}
	}
	return m.memMedium.Flush()
}

func TestLaneWriteZeroesOnAReleasedLaneIsRefused(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	ln.Release()
	if err := ln.WriteZeroes(0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("write zeroes on a released lane: %v, want ErrClosed", err)
	}
}
