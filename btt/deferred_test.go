package btt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// deferredMem is memMedium in flush mode: Persist leaves everything to
// Flush, and the pending log lives in the heap (no ProcessLog).
type deferredMem struct{ *memMedium }

func (deferredMem) PersistDeferred() bool { return true }

func formatOpenDeferred(t *testing.T, lbasize, nfree uint32) (*memMedium, *Device) {
	t.Helper()
	m := newMemMedium(32 << 20)
	if err := Format(deferredMem{m}, FormatOptions{LBASize: lbasize, NFree: nfree}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(deferredMem{m}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.def == nil {
		t.Fatal("a writable device on a deferred medium took the per-write path")
	}
	return m, d
}

// Few lanes, so that writers keep running out of clean blocks and commit
// under one another; trims and flushes on top; readers checking every
// sector they see is one whole write of its own LBA.
func TestFlushModeWritersReadersTrimsAndFlushesSeeWholeSectors(t *testing.T) {
	for _, lbasize := range []uint32{512, 4096} {
		t.Run(fmt.Sprint(lbasize), func(t *testing.T) {
			m, d := formatOpenDeferred(t, lbasize, 6)
			ss := int(d.SectorSize())
			const span, shared = 40, 8 // LBAs [span, span+shared) are also trimmed
			seedStamped(t, d, span+shared)
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			last := make([][]uint32, 4) // per writer, the seq it last wrote to each LBA it owns
			for w := range 4 {
				last[w] = make([]uint32, span)
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 1))
					buf := make([]byte, ss)
					for seq := uint32(1); seq <= 250; seq++ {
						// Writer w owns the LBAs congruent to w mod 4 (its
						// final state is checked) and shares the rest.
						lba := uint64(r.IntN(span/4)*4 + w)
						if seq%5 == 0 {
							lba = span + r.Uint64N(shared)
						}
						stamp(buf, lba, uint32(w)+1, seq)
						if err := d.WriteV(lba, [][]byte{buf}); err != nil {
							errs <- err
							return
						}
						if lba < span && lba%4 == uint64(w) {
							last[w][lba] = seq
						}
					}
				}()
			}
			stop := make(chan struct{})
			var side sync.WaitGroup
			side.Add(2)
			go func() { // flusher
				defer side.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := d.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}()
			go func() { // readers' view: whole sectors of the right LBA, or zeroes of a trim
				defer side.Done()
				r := rand.New(rand.NewPCG(9, 2))
				buf := make([]byte, 2*ss)
				zero := make([]byte, ss)
				for {
					select {
					case <-stop:
						return
					default:
					}
					lba := r.Uint64N(span + shared - 1)
					if err := d.ReadV(lba, [][]byte{buf}); err != nil {
						errs <- err
						return
					}
					for i := range 2 {
						s := buf[i*ss : (i+1)*ss]
						if string(s) == string(zero) {
							continue
						}
						if !whole(s) || binary.LittleEndian.Uint64(s) != lba+uint64(i) {
							errs <- fmt.Errorf("LBA %d: torn or misplaced sector (header LBA %d)", lba+uint64(i), binary.LittleEndian.Uint64(s))
							return
						}
					}
				}
			}()
			wg.Add(1)
			go func() { // trims of the shared LBAs, never of an owned one
				defer wg.Done()
				r := rand.New(rand.NewPCG(7, 3))
				for range 80 {
					if err := d.WriteZeroes(span+r.Uint64N(shared-1), 2); err != nil {
						errs <- err
						return
					}
				}
			}()
			wg.Wait()
			close(stop)
			side.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if d.Commits() == 0 {
				t.Fatal("no commit ran: the test exercised nothing")
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
				t.Fatalf("check: %v %+v", err, rep.Problems)
			}
			d2, err := Open(deferredMem{m}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer d2.Close()
			buf := make([]byte, ss)
			for w := range 4 {
				for lba := uint64(w); lba < span; lba += 4 {
					if last[w][lba] == 0 {
						continue
					}
					if err := d2.ReadV(lba, [][]byte{buf}); err != nil {
						t.Fatal(err)
					}
					seq := binary.LittleEndian.Uint32(buf[12:])
					who := binary.LittleEndian.Uint32(buf[8:])
					if who != uint32(w)+1 || seq != last[w][lba] || !whole(buf) {
						t.Fatalf("LBA %d after close and reopen holds writer %d's seq %d, want writer %d's last, seq %d", lba, who-1, seq, w, last[w][lba])
					}
				}
			}
		})
	}
}

func TestFlushModeCommitsWhenEveryLaneHoldsAWrite(t *testing.T) {
	_, d := formatOpenDeferred(t, 4096, 4)
	buf := make([]byte, 4096)
	for lba := range uint64(9) {
		stamp(buf, lba, 1, 1)
		if err := d.WriteV(lba, [][]byte{buf}); err != nil {
			t.Fatal(err)
		}
	}
	// Four lanes, nine LBAs: the fifth and ninth writes found no clean
	// block and committed the four before them.
	if got := d.Commits(); got != 2 {
		t.Fatalf("%d commits, want 2", got)
	}
	// Rewriting the same LBA gives its earlier block back: no commit.
	for range 20 {
		if err := d.WriteV(8, [][]byte{buf}); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.Commits(); got != 2 {
		t.Fatalf("after rewriting one LBA 20 times, %d commits, want still 2", got)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAFlushThatFailsKeepsTheWritesPendingForTheNext(t *testing.T) {
	m := &failingFlush{memMedium: newMemMedium(32 << 20)}
	if err := Format(m.memMedium, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := pattern(4096, 3, 1)
	if err := d.WriteV(3, [][]byte{want}); err != nil {
		t.Fatal(err)
	}
	m.fail = errors.New("EIO from msync")
	if err := d.Flush(); !errors.Is(err, m.fail) {
		t.Fatalf("flush: %v, want the msync error", err)
	}
	m.fail = nil
	if err := d.Flush(); err != nil {
		t.Fatalf("the next flush: %v", err)
	}
	if d.Commits() != 1 {
		t.Fatalf("%d commits, want the one after the failure", d.Commits())
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = Open(deferredMem{m.memMedium}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 4096)
	if err := d.ReadV(3, [][]byte{buf}); err != nil || string(buf) != string(want) {
		t.Fatalf("after reopen: %v, same data %v", err, string(buf) == string(want))
	}
}

type failingFlush struct {
	*memMedium
	fail error
}

func (*failingFlush) PersistDeferred() bool { return true }

func (f *failingFlush) Flush() error {
	if f.fail != nil {
		return f.fail
	}
	return f.memMedium.Flush()
}

// Past the 256 lanes a device uses, an arena's free blocks still serve a
// deferred medium's writes between commits: nfree is the budget.
func TestFlushModeWritesTakeEveryFreeBlockOfTheArenaBeforeCommitting(t *testing.T) {
	_, d := formatOpenDeferred(t, 4096, 1000)
	buf := make([]byte, 4096)
	for lba := range uint64(1000) {
		stamp(buf, lba, 1, 1)
		if err := d.WriteV(lba, [][]byte{buf}); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.Commits(); got != 0 {
		t.Fatalf("%d commits after 1000 writes on an arena of 1000 free blocks, want 0", got)
	}
	if err := d.WriteV(1000, [][]byte{buf}); err != nil {
		t.Fatal(err)
	}
	if got := d.Commits(); got != 1 {
		t.Fatalf("the 1001st write: %d commits, want 1", got)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}
