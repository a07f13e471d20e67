package btt

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

// growingMem is memMedium with room to grow into: Extend lengthens it over
// the same backing array, so slices from before stay valid, as pmem's
// Extend keeps its earlier mapping.
type growingMem struct {
	*memMedium
	deferred bool
}

func newGrowingMem(size, room int64, deferred bool) *growingMem {
	return &growingMem{memMedium: &memMedium{buf: make([]byte, size, room)}, deferred: deferred}
}

func (g *growingMem) Extend(n int64) { g.buf = g.buf[:n] }

func (g *growingMem) PersistDeferred() bool { return g.deferred }

func TestADeviceGrowsWhileItsLanesReadAndWrite(t *testing.T) {
	for _, deferred := range []bool{false, true} {
		t.Run(fmt.Sprintf("deferred=%v", deferred), func(t *testing.T) {
			m := newGrowingMem(20<<20+4096, 56<<20, deferred)
			if err := Format(m, FormatOptions{LBASize: 4096}); err != nil {
				t.Fatal(err)
			}
			d, err := Open(m, Options{})
			if err != nil {
				t.Fatal(err)
			}
			before := d.NumSectors()
			// Queues holding lanes keep writing and reading their own
			// LBAs while the device grows under them.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			for q := range 2 {
				ln, err := d.TryAcquireLane()
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer ln.Release()
					buf, got := make([]byte, 4096), make([]byte, 4096)
					for gen := 1; ; gen++ {
						select {
						case <-stop:
							return
						default:
						}
						lba := uint64(q*100 + gen%50)
						stamp(buf, lba, uint32(q), uint32(gen))
						if err := ln.WriteV(lba, [][]byte{buf}); err != nil {
							errs <- err
							return
						}
						if err := ln.ReadV(lba, [][]byte{got}); err != nil || !bytes.Equal(got, buf) {
							errs <- fmt.Errorf("queue %d LBA %d: %v, read back same %v", q, lba, err, bytes.Equal(got, buf))
							return
						}
					}
				}()
			}
			m.Extend(56 << 20)
			res, err := d.Grow()
			close(stop)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Arenas != 1 || d.NumSectors() != res.SectorsAfter || res.SectorsAfter <= before {
				t.Fatalf("grow: %+v, device %d sectors (was %d)", res, d.NumSectors(), before)
			}
			last := d.NumSectors() - 1
			want := pattern(4096, last, 3)
			if err := d.WriteV(last, [][]byte{want}); err != nil {
				t.Fatalf("write of the new last LBA: %v", err)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			d, err = Open(m, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			buf := make([]byte, 4096)
			if err := d.ReadV(last, [][]byte{buf}); err != nil || !bytes.Equal(buf, want) {
				t.Fatalf("reopened, the new last LBA: %v", err)
			}
			if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
				t.Fatalf("check: %v %+v", err, rep)
			}
		})
	}
}

func TestGrowOfAMediumWithNoNewSpaceSaysSo(t *testing.T) {
	m := newGrowingMem(20<<20+4096, 20<<20+4096, false)
	if err := Format(m, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Grow(); err == nil || !bytes.Contains([]byte(err.Error()), []byte(ErrNoRoomToGrow.Error())) {
		t.Fatalf("grow with no new space: %v", err)
	}
}
