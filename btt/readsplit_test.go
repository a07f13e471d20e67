package btt

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"
)

// twoCPUs lets the test's read helpers run, which they refuse to on one
// CPU, even on a one-CPU box (GOMAXPROCS may exceed the CPUs).
func twoCPUs(t *testing.T) {
	if n := runtime.GOMAXPROCS(0); n < 2 {
		runtime.GOMAXPROCS(2)
		t.Cleanup(func() { runtime.GOMAXPROCS(n) })
	}
}

// laneWithReadHelper acquires a lane of d with a read helper, released when
// the test ends.
func laneWithReadHelper(t *testing.T, d *Device) *Lane {
	t.Helper()
	twoCPUs(t)
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ln.Release)
	if err := ln.AddReadHelper(); err != nil {
		t.Fatal(err)
	}
	return ln
}

// A queue's lane with a read helper reads exactly what the device reads
// without one: large reads of a scattered map, of sizes that do not divide
// into chunks evenly, into io-vectors whose segments split sectors.
func TestALaneWithAReadHelperReadsWhatALaneWithoutOneReads(t *testing.T) {
	for _, lbasize := range []uint32{512, 4096} {
		t.Run(fmt.Sprint(lbasize), func(t *testing.T) {
			_, d := formatOpen(t, 32<<20, lbasize)
			ss := int(lbasize)
			span := (3 << 20) / ss // room for the largest read
			seedStamped(t, d, uint64(span))
			// Rewrite a random half, so runs of consecutive blocks are
			// short and scattered.
			r := rand.New(rand.NewPCG(3, 4))
			one := make([]byte, ss)
			for i := range uint32(span / 2) {
				lba := r.Uint64N(uint64(span))
				stamp(one, lba, 1, i)
				if err := d.WriteV(lba, [][]byte{one}); err != nil {
					t.Fatal(err)
				}
			}
			ln := laneWithReadHelper(t, d)
			for _, bytesLen := range []int{64 << 10, 100 << 10, 128 << 10, 129 << 10, 1 << 20} {
				n := bytesLen / ss
				lba := r.Uint64N(uint64(span - n))
				want := make([]byte, n*ss)
				if err := d.ReadV(lba, [][]byte{want}); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, n*ss)
				// Segments whose edges fall inside sectors and inside chunks.
				iov := [][]byte{got[:ss/2], got[ss/2 : 5*ss+7], got[5*ss+7 : 40<<10-1], got[40<<10-1:]}
				for range 20 {
					clear(got)
					if err := ln.ReadV(lba, iov); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, want) {
						t.Fatalf("%d sectors at LBA %d read with the helper differ from the device's read", n, lba)
					}
				}
			}
		})
	}
}

// A fault in the caller's buffer is an error for that read, whichever side
// copied the chunk, and names the first sector whose buffer faulted; the
// helper goes on serving the lane's next reads.
func TestAReadWithAHelperFailsAtTheFirstFaultingSector(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	seedStamped(t, d, 64)
	ln := laneWithReadHelper(t, d)
	good := make([]byte, 8*4096)
	for range 20 {
		err := ln.ReadV(10, [][]byte{good, faultingBuffer(t, 24*4096)})
		if !errors.Is(err, ErrBufferFault) || !strings.Contains(err.Error(), "LBA 18") {
			t.Fatalf("read whose buffer faults from its ninth sector: %v, want ErrBufferFault at LBA 18", err)
		}
	}
	buf := make([]byte, 32*4096)
	if err := ln.ReadV(10, [][]byte{buf}); err != nil {
		t.Fatal(err)
	}
	for s := range 32 {
		if sec := buf[s*4096 : (s+1)*4096]; !whole(sec) {
			t.Fatalf("sector %d of the read after the faults is torn", s)
		}
	}
}

// Release stops the helper's goroutine and gives its lane back: Close,
// which waits for every held lane, returns.
func TestReleaseStopsTheReadHelperAndGivesItsLaneBack(t *testing.T) {
	twoCPUs(t)
	_, d := formatOpen(t, 32<<20, 4096)
	before := runtime.NumGoroutine()
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	if err := ln.AddReadHelper(); err != nil {
		t.Fatal(err)
	}
	if err := ln.ReadV(0, [][]byte{make([]byte, 128<<10)}); err != nil {
		t.Fatal(err)
	}
	ln.Release()
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for a lane the released read helper kept")
	}
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Release, %d before the lane", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}

// A helper takes a lane only while half of the device's lanes stay free
// for queues of their own; the lane it was refused for still reads.
func TestAReadHelperIsRefusedWhenItWouldLeaveFewerThanHalfTheLanes(t *testing.T) {
	twoCPUs(t)
	_, d := formatOpenNFree(t, 4)
	first, err := d.TryAcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release()
	if err := first.AddReadHelper(); err != nil {
		t.Fatalf("helper leaving 2 of 4 lanes: %v", err)
	}
	second, err := d.TryAcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	defer second.Release()
	if err := second.AddReadHelper(); !errors.Is(err, ErrNoLane) {
		t.Fatalf("helper that would leave 0 of 4 lanes: %v, want ErrNoLane", err)
	}
	if err := second.ReadV(0, [][]byte{make([]byte, 128<<10)}); err != nil {
		t.Fatal(err)
	}
}

// On one CPU a helper could only take turns with its Lane's caller: it is
// refused, and the Lane reads alone.
func TestAReadHelperIsRefusedOnOneCPU(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	_, d := formatOpen(t, 32<<20, 4096)
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Release()
	if err := ln.AddReadHelper(); err == nil || !strings.Contains(err.Error(), "GOMAXPROCS is 1") {
		t.Fatalf("read helper with GOMAXPROCS 1: %v, want a refusal naming it", err)
	}
	if err := ln.ReadV(0, [][]byte{make([]byte, 128<<10)}); err != nil {
		t.Fatal(err)
	}
}
