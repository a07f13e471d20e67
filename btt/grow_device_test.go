package btt

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// growingMem is an in-memory medium with room to grow into: its buffer
// is allocated whole and Extend only moves its end, so slices from before
// stay valid, as pmem's Extend keeps its earlier mapping. Lanes persist
// while the test extends it: the size is atomic.
type growingMem struct {
	buf      []byte
	size     atomic.Int64
	deferred bool
}

func newGrowingMem(size, room int64, deferred bool) *growingMem {
	g := &growingMem{buf: make([]byte, room), deferred: deferred}
	g.size.Store(size)
	return g
}

func (g *growingMem) Extend(n int64) { g.size.Store(n) }

func (g *growingMem) PersistDeferred() bool { return g.deferred }

func (g *growingMem) Size() int64 { return g.size.Load() }

func (g *growingMem) Slice(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > g.Size()-n {
		return nil, fmt.Errorf("growing: [%d, +%d) out of range", off, n)
	}
	return g.buf[off : off+n : off+n], nil
}

func (g *growingMem) Persist(off, n int64) error {
	_, err := g.Slice(off, n)
	return err
}

func (g *growingMem) Flush() error { return nil }

func (g *growingMem) Zero(off, n int64) error {
	b, err := g.Slice(off, n)
	if err != nil {
		return err
	}
	clear(b)
	return nil
}

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
