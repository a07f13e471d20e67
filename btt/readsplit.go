package btt

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
)

// A large read through a Lane is copied by two goroutines when the Lane has
// a read helper (AddReadHelper): the Lane's caller and a goroutine of the
// helper's own, on a second lane. A read of scattered blocks is bound by
// memory latency (each 4 KiB block is a page walk and a cold stream of its
// own), not by bandwidth, so a second core nearly doubles it: in
// BenchmarkRead128KiBScattered2Goroutines two goroutines copy 1.7-1.9x one.
// A vhost queue is one goroutine, so without a helper a guest with one
// queue gets one core for its reads; qemu-storage-daemon's io_uring workers
// give it more.
//
// The read is cut into chunks, and both sides claim chunks one at a time
// from a shared counter until none are left, so the caller never waits
// for the helper to start: when the helper's core is busy (with another
// queue, say) the caller copies every chunk itself and waits for nothing.
// It waits only for a chunk the helper claimed and is copying. Each sector
// is still read whole by one side, under that side's lane's read tracking.

// splitMinBytes is the smallest read that is split: below it, waking the
// helper costs more than the half of the copy it could take.
const splitMinBytes = 64 << 10

// helperSpin is how long the helper keeps looking for the next read's
// chunks after it ran out, before it sleeps until woken: while a queue
// keeps large reads coming (a queue depth above one) it takes its share of
// each at once, instead of after the wake-up of a sleeping thread, which on
// a virtual machine's idle vCPU costs more than a chunk's copy.
const helperSpin = 50 * time.Microsecond

// splitChunkBytes is the size chunks aim at, and splitMaxChunks bounds
// their number (a larger read gets larger chunks).
const (
	splitChunkBytes = 32 << 10
	splitMaxChunks  = 16
)

// readHelper is a second lane and the goroutine that copies chunks of its
// owner Lane's large reads on it. It has no mutex: the owner and the
// helper meet only on claim, finished and parked (sync/atomic) and on wake.
type readHelper struct {
	ln   *Lane
	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	// parked is set by the helper before it sleeps on wake and cleared
	// when it wakes; the owner sends on wake only while it is set. Both
	// sides store then load (sequentially consistent), so either the
	// helper's look at claim after setting it sees a new read, or the
	// owner's look at it after publishing the read sees it set.
	parked atomic.Bool

	// claim packs the current read's generation (bits 32-63), its number
	// of chunks (bits 16-31) and the next chunk to claim (bits 0-15).
	// Stored by the owner to start a read, after the read's fields below;
	// advanced by either side with a compare-and-swap to claim a chunk
	// (sequentially consistent: a side that claims a chunk of generation
	// g reads the fields the owner wrote before publishing g).
	claim atomic.Uint64
	// finished counts the current read's chunks done, by either side. The
	// owner changes the read's fields only once it reaches the number of
	// chunks, after every claimed chunk has been copied.
	finished atomic.Uint32

	// The current read; written by the owner before it publishes claim,
	// read by whichever side claims a chunk of it.
	gen      uint32
	lba      uint64
	n        uint64 // sectors
	chunkLen uint64 // sectors per chunk, the last one may be shorter
	iov      [][]byte
	// errs is each chunk's outcome, written by the side that copied it
	// before it counts the chunk finished.
	errs [splitMaxChunks]error
}

// AddReadHelper gives the Lane a second lane and a goroutine on it, which
// from then on copy part of each read of 64 KiB or more alongside the
// Lane's caller. It takes the lane as TryAcquireLane does, and only while
// at least half of the device's lanes stay free for queues of their own;
// otherwise it fails with an error wrapping ErrNoLane and the Lane reads
// alone. It also fails when the process has one CPU to run on. Release
// stops the goroutine and gives both lanes back.
func (ln *Lane) AddReadHelper() error {
	if ln.l == nil {
		return fmt.Errorf("btt: %w: lane released", ErrClosed)
	}
	if ln.helper != nil {
		return nil
	}
	// On one CPU (GOMAXPROCS 1, as under a single-CPU affinity) the helper
	// could only take turns with the caller, and its look for more work
	// after a burst would hold the caller off the CPU.
	if runtime.GOMAXPROCS(0) < 2 {
		return fmt.Errorf("btt: a read helper needs a second CPU, and GOMAXPROCS is 1")
	}
	d := ln.d
	d.laneMu.Lock()
	held := d.held
	d.laneMu.Unlock()
	if 2*(held+1) > cap(d.lanes) {
		return fmt.Errorf("btt: %w: a read helper would leave fewer than half of the device's %d lanes (%d are held)",
			ErrNoLane, cap(d.lanes), held)
	}
	hl, err := d.TryAcquireLane()
	if err != nil {
		return err
	}
	h := &readHelper{
		ln:   hl,
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go h.serve()
	ln.helper = h
	return nil
}

// serve copies the chunks it can claim, looks for more for helperSpin, and
// then sleeps until woken, until Release.
func (h *readHelper) serve() {
	defer close(h.done)
	for {
		for h.copyChunk(h.ln.l) {
		}
		if h.spin() {
			continue
		}
		h.parked.Store(true)
		if h.chunkLeft() {
			h.parked.Store(false)
			continue
		}
		select {
		case <-h.stop:
			return
		case <-h.wake:
			h.parked.Store(false)
		}
	}
}

// spin watches claim for an unclaimed chunk for helperSpin and reports
// whether one came.
func (h *readHelper) spin() bool {
	deadline := time.Now().Add(helperSpin)
	for {
		for range 64 {
			if h.chunkLeft() {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// chunkLeft reports whether the current read has a chunk nobody claimed.
func (h *readHelper) chunkLeft() bool {
	next, chunks := claimed(h.claim.Load())
	return next < chunks
}

// claimed unpacks a claim word: the next chunk to claim and the read's
// number of chunks.
func claimed(v uint64) (next, chunks uint64) { return v & 0xffff, v >> 16 & 0xffff }

// close stops the goroutine and gives its lane back.
func (h *readHelper) close() {
	close(h.stop)
	<-h.done
	h.ln.Release()
}

// read reads n sectors at lba into iov with the helper: the caller's side
// copies chunks on lane l until none are left, then waits for the ones the
// helper is still copying, and returns the first chunk's error in LBA
// order.
func (h *readHelper) read(l *lane, lba, n uint64, iov [][]byte, sector uint32) error {
	chunks := min(splitMaxChunks, (n*uint64(sector)+splitChunkBytes-1)/splitChunkBytes)
	h.chunkLen = (n + chunks - 1) / chunks
	chunks = (n + h.chunkLen - 1) / h.chunkLen
	h.lba, h.n, h.iov = lba, n, iov
	h.finished.Store(0)
	h.gen++
	h.claim.Store(uint64(h.gen)<<32 | chunks<<16)
	if h.parked.Load() {
		select {
		case h.wake <- struct{}{}:
		default: // already woken: it will find this read's chunks
		}
	}
	for h.copyChunk(l) {
	}
	// What is left is at most one chunk the helper is copying.
	for uint64(h.finished.Load()) < chunks {
		runtime.Gosched()
	}
	// Not kept past the read: a guest's memory may be unmapped after it.
	h.iov = nil
	for i := range chunks {
		if err := h.errs[i]; err != nil {
			return err
		}
	}
	return nil
}

// copyChunk claims the next chunk of the current read, if one is left,
// copies it through lane l and reports whether it did.
func (h *readHelper) copyChunk(l *lane) bool {
	for {
		v := h.claim.Load()
		next, chunks := claimed(v)
		if next >= chunks {
			return false
		}
		if !h.claim.CompareAndSwap(v, v+1) {
			continue
		}
		d := h.ln.d
		first := next * h.chunkLen
		k := min(h.chunkLen, h.n-first)
		h.errs[next] = d.readOn(l, h.lba+first, k, h.iov, int(first)*int(d.sector))
		h.finished.Add(1)
		return true
	}
}
