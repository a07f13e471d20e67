package btt

import (
	"bytes"
	"errors"
	"sync"
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
