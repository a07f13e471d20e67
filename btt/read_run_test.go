package btt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Reads copy a run of sectors whose blocks are consecutive with one copy,
// behind one read-tracking publish of the run's range of blocks (readOn,
// findRun). These tests are the cases that design adds: ranges writers
// must respect, runs that end where the map or the arena does, and faults
// part way through a run.

func TestReadTrackingRangeCoversItsBlocksAndNoOthers(t *testing.T) {
	for _, c := range []struct {
		name         string
		word         uint64
		block        uint32
		wantCovering bool
	}{
		{"an empty slot covers no block", 0, 0, false},
		{"an empty slot covers no other block", 0, 7, false},
		{"a range of block 0 alone covers it", rttRange(0, 1), 0, true},
		{"a range of block 0 alone covers not block 1", rttRange(0, 1), 1, false},
		{"a range covers its first block", rttRange(100, 32), 100, true},
		{"a range covers a block in its middle", rttRange(100, 32), 117, true},
		{"a range covers its last block", rttRange(100, 32), 131, true},
		{"a range does not cover the block after its last", rttRange(100, 32), 132, false},
		{"a range does not cover the block before its first", rttRange(100, 32), 99, false},
		{"a range at the top of the block numbers covers its last", rttRange(maxPostmapLBA-3, 4), maxPostmapLBA, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := rttCovers(c.word, c.block); got != c.wantCovering {
				t.Fatalf("rttCovers(%#x, %d) = %v", c.word, c.block, got)
			}
		})
	}
}

// A reader that published a range of blocks may still be copying any of
// them: the writer whose free block is inside the range, not only at its
// start, must wait, and must go ahead once the reader lets go.
func TestWriterWaitsForAReaderWhoseRangeCoversItsFreeBlock(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Release()
	reader := &lane{id: 5}
	a.markReader(reader.id)
	free := a.free[ln.l.id].block
	a.rtt[reader.id].Store(rttRange(free-10, 16))

	done := make(chan error, 1)
	go func() { done <- ln.WriteV(3, [][]byte{make([]byte, 4096)}) }()
	select {
	case err := <-done:
		t.Fatalf("the write into block %d went ahead while a reader's range [%d, %d) covered it (err %v)", free, free-10, free+6, err)
	case <-time.After(100 * time.Millisecond):
	}
	a.endRead(reader)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not go ahead after the reader cleared its slot")
	}
}

// A range that ends just before the writer's free block, or starts just
// after it, does not hold the writer up.
func TestWriterDoesNotWaitForReaderRangesBesideItsFreeBlock(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Release()
	before, after := &lane{id: 5}, &lane{id: 6}
	a.markReader(before.id)
	a.markReader(after.id)
	free := a.free[ln.l.id].block
	a.rtt[before.id].Store(rttRange(free-8, 8))
	a.rtt[after.id].Store(rttRange(free+1, 8))
	defer a.endRead(before)
	defer a.endRead(after)

	done := make(chan error, 1)
	go func() { done <- ln.WriteV(3, [][]byte{make([]byte, 4096)}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the write into block %d waits for ranges [%d, %d) and [%d, %d), which do not hold it", free, free-8, free, free+1, free+9)
	}
}

// stampBlocks writes stamped sectors for LBAs [0, span) straight into the
// blocks a fresh BTT maps them to (LBA n to block n), so the map is the
// identity and a wide read is a few long runs until writers break them.
func stampBlocks(d *Device, span uint64) {
	a := d.arenaList()[0]
	ss := int(d.SectorSize())
	for lba := uint64(0); lba < span; lba++ {
		off := int(lba) * int(a.internalLBASize)
		stamp(a.dataArea[off:off+ss], lba, 0, 0)
	}
}

// Readers read wide spans of a map that starts as one run of consecutive
// blocks, while writers move sectors inside it: each write ends a run
// (its sector's new block is elsewhere), and in the per-write mode frees a
// block inside runs that readers are copying, which the lane's next write
// reuses. Every sector read must be one whole version of its own LBA.
func TestReadsOfRunsOfConsecutiveBlocksAgainstWritersSeeWholeSectors(t *testing.T) {
	for _, c := range []struct{ deferred, helper bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		t.Run(fmt.Sprintf("deferred=%v,helper=%v", c.deferred, c.helper), func(t *testing.T) {
			// With read helpers (a lane each, taken only while half the
			// lanes stay free) the readers' wide reads are split between
			// two lanes.
			nfree := uint32(5)
			if c.helper {
				nfree = 12
				twoCPUs(t)
			}
			var d *Device
			if c.deferred {
				_, d = formatOpenDeferred(t, 4096, nfree)
			} else {
				_, d = formatOpenNFree(t, nfree)
			}
			ss := int(d.SectorSize())
			const span, width = 96, 40
			stampBlocks(d, span)
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for w := uint32(1); w <= 2; w++ {
				wg.Add(1)
				// Each goroutine owns its lane, as a vhost queue does: the
				// block a write frees is the one its writer's next write
				// fills, at once.
				ln, err := d.AcquireLane()
				if err != nil {
					t.Fatal(err)
				}
				go func() {
					defer wg.Done()
					defer ln.Release()
					r := rand.New(rand.NewPCG(uint64(w), 5))
					buf := make([]byte, 2*ss)
					for seq := uint32(1); seq <= 2000; seq++ {
						// One sector or two, so a multi-sector write lands
						// inside a run as well.
						lba, n := r.Uint64N(span-1), 1+r.IntN(2)
						for k := range n {
							stamp(buf[k*ss:(k+1)*ss], lba+uint64(k), w, seq)
						}
						if err := ln.WriteV(lba, [][]byte{buf[:n*ss]}); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			for rd := 0; rd < 2; rd++ {
				wg.Add(1)
				ln, err := d.AcquireLane()
				if err != nil {
					t.Fatal(err)
				}
				if c.helper {
					if err := ln.AddReadHelper(); err != nil {
						t.Fatal(err)
					}
				}
				go func() {
					defer wg.Done()
					defer ln.Release()
					r := rand.New(rand.NewPCG(uint64(rd), 6))
					buf := make([]byte, width*ss)
					// Segments that split sectors, as guest iovecs may.
					iov := [][]byte{buf[:ss/2], buf[ss/2 : 17*ss+100], buf[17*ss+100:]}
					for i := 0; i < 1000; i++ {
						lba := r.Uint64N(span - width + 1)
						if err := ln.ReadV(lba, iov); err != nil {
							errs <- err
							return
						}
						for s := 0; s < width; s++ {
							sec := buf[s*ss : (s+1)*ss]
							if !whole(sec) || binary.LittleEndian.Uint64(sec) != lba+uint64(s) {
								errs <- fmt.Errorf("read at %d: sector %d torn or misplaced", lba, s)
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			quiescent(t, d)
		})
	}
}

// The last sectors of one arena and the first of the next are each a run
// of consecutive blocks (a grown device maps both identically), and one
// read covers both: the run must end at the arena's last sector, not go on
// through the first arena's map and data area.
func TestReadWhoseRunWouldCrossAnArenaBoundaryEndsItThere(t *testing.T) {
	m := newGrowingMem(20<<20+4096, 44<<20, false)
	if err := Format(m, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	m.Extend(40<<20 + 4096)
	if _, err := Grow(m); err != nil {
		t.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	arenas := d.arenaList()
	if len(arenas) != 2 {
		t.Fatalf("%d arenas after growing, want 2", len(arenas))
	}
	first, second := arenas[0], arenas[1]
	boundary := second.externalStart
	const each = 4
	for k := uint64(0); k < 2*each; k++ {
		lba := boundary - each + k
		a, premap := d.locate(lba)
		if a == first && premap != uint32(lba) || a == second && premap != uint32(lba-boundary) {
			t.Fatalf("LBA %d located at premap %d", lba, premap)
		}
		off := int(premap) * int(a.internalLBASize)
		stamp(a.dataArea[off:off+4096], lba, 0, 0)
	}
	buf := make([]byte, 2*each*4096)
	if err := d.ReadV(boundary-each, [][]byte{buf}); err != nil {
		t.Fatal(err)
	}
	for k := 0; k < 2*each; k++ {
		sec := buf[k*4096 : (k+1)*4096]
		if !whole(sec) || binary.LittleEndian.Uint64(sec) != boundary-each+uint64(k) {
			t.Fatalf("sector %d of the read across the boundary at LBA %d is not its own", k, boundary)
		}
	}
	quiescent(t, d)
}

// A fault in the block of a run's fifth sector marks that sector, the one
// whose block faulted, as a media error, and names it in the error: not
// the run's first sector, and none of its neighbours.
func TestReadThatFaultsPartWayThroughARunMarksTheSectorWhoseBlockFaulted(t *testing.T) {
	m := newMmapMedium(t, 32<<20)
	if err := Format(m, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Fresh: LBAs 2..9 are blocks 2..9, one run.
	m.protect(t, blockOff(d, 6), 4096, unix.PROT_NONE)
	err = d.ReadV(2, [][]byte{make([]byte, 8*4096)})
	if !errors.Is(err, ErrMediaFault) || !strings.Contains(err.Error(), "LBA 6:") {
		t.Fatalf("read of a run whose fifth block faults: %v, want ErrMediaFault at LBA 6", err)
	}
	a := d.arenaList()[0]
	for lba := uint32(2); lba < 10; lba++ {
		if _, _, mediaErr := a.lookup(lba); mediaErr != (lba == 6) {
			t.Errorf("LBA %d: error flag %v", lba, mediaErr)
		}
	}
	quiescent(t, d)
	// The rest of the run still reads; the marked sector reads as a media
	// error without touching its block.
	if err := d.ReadV(2, [][]byte{make([]byte, 4*4096)}); err != nil {
		t.Fatalf("the sectors before the faulted one: %v", err)
	}
	if err := d.ReadV(7, [][]byte{make([]byte, 3*4096)}); err != nil {
		t.Fatalf("the sectors after the faulted one: %v", err)
	}
	if err := d.ReadV(2, [][]byte{make([]byte, 8*4096)}); !errors.Is(err, ErrMediaError) {
		t.Fatalf("the run again: %v, want ErrMediaError", err)
	}
}

// A run of trimmed sectors reads as zeroes in one go, between runs of
// data on both sides.
func TestReadOfTrimmedSectorsInsideARunReadsZeroesBetweenTheData(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	stampBlocks(d, 16)
	if err := d.WriteZeroes(5, 6); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16*4096)
	if err := d.ReadV(0, [][]byte{buf}); err != nil {
		t.Fatal(err)
	}
	for k := uint64(0); k < 16; k++ {
		sec := buf[k*4096 : (k+1)*4096]
		if k >= 5 && k < 11 {
			if strings.Trim(string(sec), "\x00") != "" {
				t.Fatalf("trimmed sector %d does not read as zeroes", k)
			}
		} else if !whole(sec) || binary.LittleEndian.Uint64(sec) != k {
			t.Fatalf("sector %d is not its own", k)
		}
	}
}
