package btt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
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
					buf := make([]byte, 4*ss)
					for seq := uint32(1); seq <= 250; seq++ {
						// Writer w owns the LBAs congruent to w mod 4 (its
						// final state is checked) and shares the rest,
						// which it writes up to 4 sectors at a time: more
						// than the clean blocks left, often, so a write's
						// batch ends early and the next one commits.
						lba, n := uint64(r.IntN(span/4)*4+w), uint64(1)
						if seq%5 == 0 {
							n = 1 + r.Uint64N(4)
							lba = span + r.Uint64N(shared-n+1)
						}
						for k := range n {
							stamp(buf[k*uint64(ss):(k+1)*uint64(ss)], lba+k, uint32(w)+1, seq)
						}
						if err := d.WriteV(lba, [][]byte{buf[:n*uint64(ss)]}); err != nil {
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

// A write of more sectors than there are clean blocks copies as many as
// there are, publishes them, commits and goes on with the rest.
func TestFlushModeWriteOfMoreSectorsThanCleanBlocksCommitsWithinTheRequest(t *testing.T) {
	m, d := formatOpenDeferred(t, 4096, 4)
	buf := make([]byte, 11*4096)
	for k := range uint64(11) {
		stamp(buf[k*4096:(k+1)*4096], 3+k, 1, 1)
	}
	if err := d.WriteV(3, [][]byte{buf}); err != nil {
		t.Fatal(err)
	}
	// Four clean blocks: sectors 5 and 9 found none and committed.
	if got := d.Commits(); got != 2 {
		t.Fatalf("%d commits, want 2", got)
	}
	got := make([]byte, len(buf))
	if err := d.ReadV(3, [][]byte{got}); err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, buf))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	mustBeConsistent(t, m)
}

// A fault in the guest's buffer partway through a multi-sector write gives
// back every clean block the write's batch took: the device keeps all its
// free blocks, and the sectors keep whole contents.
func TestFlushModeWriteFromABufferThatFaultsPartwayGivesEveryBlockBack(t *testing.T) {
	m, d := formatOpenDeferred(t, 4096, 32)
	good := make([]byte, 5*4096)
	for k := range uint64(5) {
		stamp(good[k*4096:(k+1)*4096], 100+k, 1, 1)
	}
	err := d.WriteV(100, [][]byte{good, faultingBuffer(t, 11*4096)})
	if !errors.Is(err, ErrBufferFault) || !strings.Contains(err.Error(), "LBA 105") {
		t.Fatalf("write whose sixth sector's buffer faults: %v, want ErrBufferFault at LBA 105", err)
	}
	// Every one of the 32 clean blocks is back: 32 more writes need no
	// commit.
	one := make([]byte, 4096)
	for lba := range uint64(32) {
		stamp(one, lba, 2, 1)
		if err := d.WriteV(lba, [][]byte{one}); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.Commits(); got != 0 {
		t.Fatalf("%d commits after 32 writes, want 0: the faulted write kept clean blocks", got)
	}
	got := make([]byte, 16*4096)
	if err := d.ReadV(100, [][]byte{got}); err != nil {
		t.Fatal(err)
	}
	for k := range 16 {
		if s := got[k*4096 : (k+1)*4096]; !whole(s) && !bytes.Equal(s, make([]byte, 4096)) {
			t.Fatalf("LBA %d is torn", 100+k)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	mustBeConsistent(t, m)
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

// deferredMmap is mmapMedium in flush mode.
type deferredMmap struct{ *mmapMedium }

func (deferredMmap) PersistDeferred() bool { return true }

// A multi-sector write whose map page faults partway (a hole a full
// filesystem cannot fill) keeps the sectors it published before that page
// and gives back the clean blocks of the rest.
func TestFlushModeWriteWhoseMapPageFaultsPartwayKeepsTheSectorsBeforeIt(t *testing.T) {
	m := newMmapMedium(t, 32<<20)
	if err := Format(deferredMmap{m}, FormatOptions{LBASize: 4096, NFree: 32}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(deferredMmap{m}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a := d.arenaList()[0]
	// LBAs 1024 on have their entries in the map's second page.
	m.protect(t, a.mapOff+4096, 4096, unix.PROT_READ)
	buf := make([]byte, 16*4096)
	for k := range uint64(16) {
		stamp(buf[k*4096:(k+1)*4096], 1020+k, 1, 1)
	}
	err = d.WriteV(1020, [][]byte{buf})
	if !errors.Is(err, ErrMediaFault) || !strings.Contains(err.Error(), "LBA 1024") {
		t.Fatalf("write across a map page that faults: %v, want ErrMediaFault at LBA 1024", err)
	}
	m.protect(t, a.mapOff+4096, 4096, unix.PROT_READ|unix.PROT_WRITE)
	got := make([]byte, 16*4096)
	if err := d.ReadV(1020, [][]byte{got}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4*4096], buf[:4*4096]) {
		t.Fatal("the sectors published before the faulting map page lost their data")
	}
	if !bytes.Equal(got[4*4096:], make([]byte, 12*4096)) {
		t.Fatal("a sector past the faulting map page changed")
	}
	// 4 blocks went to the published sectors: the other 28 are clean.
	one := make([]byte, 4096)
	for lba := range uint64(28) {
		stamp(one, lba, 2, 1)
		if err := d.WriteV(lba, [][]byte{one}); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.Commits(); got != 0 {
		t.Fatalf("%d commits after 28 writes, want 0: the faulted write kept clean blocks", got)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	mustBeConsistent(t, m)
}
