package btt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// quiescent fails unless every read-tracking slot is clear: a multi-sector
// read holds its slot across its sectors and must let go of it when it
// returns, whether it failed or not.
func quiescent(t *testing.T, d *Device) {
	t.Helper()
	for i, a := range d.arenaList() {
		for lane := range a.rtt {
			if v := a.rtt[lane].Load(); v != 0 {
				t.Fatalf("arena %d lane %d: rtt slot still holds %#x", i, lane, v)
			}
		}
	}
}

func TestMultiSectorReadsAgainstWritersSeeWholeSectors(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	ss := int(d.SectorSize())
	const span, width = 24, 6
	seedStamped(t, d, span)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := uint32(1); w <= 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 3))
			buf := make([]byte, ss)
			for seq := uint32(1); seq <= 400; seq++ {
				lba := r.Uint64N(span)
				stamp(buf, lba, w, seq)
				if err := d.WriteV(lba, [][]byte{buf}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for rd := 0; rd < 3; rd++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(rd), 4))
			// Segments that straddle sectors, as guest iovecs may.
			buf := make([]byte, width*ss)
			iov := [][]byte{buf[:ss/2], buf[ss/2 : 3*ss+100], buf[3*ss+100:]}
			for i := 0; i < 300; i++ {
				lba := r.Uint64N(span - width + 1)
				if err := d.ReadV(lba, iov); err != nil {
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
}

func TestFailedMultiSectorReadReleasesReadTracking(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	buf := make([]byte, 4096)
	for lba := uint64(0); lba < 8; lba++ {
		if err := d.WriteV(lba, [][]byte{buf}); err != nil {
			t.Fatal(err)
		}
	}
	a := d.arenaList()[0]
	block, _, _ := a.lookup(5)
	storeWord32(a.mapArea, 5*MapEntrySize, block|mapErrorFlag)
	err := d.ReadV(2, [][]byte{make([]byte, 6*4096)})
	if !errors.Is(err, ErrMediaError) {
		t.Fatalf("read over a media-error sector: %v", err)
	}
	quiescent(t, d)
	// A writer whose free block a stale slot named would spin for ever;
	// a write to every LBA proves none is left.
	for lba := uint64(0); lba < 8; lba++ {
		if lba != 5 {
			if err := d.WriteV(lba, [][]byte{buf}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A reader on a lane past the first 64 (the second word of the arena's
// reader-lane mask) publishes the block a writer is about to fill: the
// writer must wait until the reader clears its slot, and must not wait
// once it has. Lane 70 stands for a queue that has read before.
func TestWriterWaitsForAReaderOnAnyLaneThatPublishedItsFreeBlock(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	if len(a.rtt) <= 70 {
		t.Fatalf("arena has %d lanes, the test needs 71", len(a.rtt))
	}
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Release()
	reader := &lane{id: 70}
	a.markReader(reader.id)
	free := a.free[ln.l.id].block
	a.rtt[reader.id].Store(rttRange(free, 1))

	done := make(chan error, 1)
	go func() { done <- ln.WriteV(3, [][]byte{make([]byte, 4096)}) }()
	select {
	case err := <-done:
		t.Fatalf("the write into block %d went ahead while lane 70 was reading it (err %v)", free, err)
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
