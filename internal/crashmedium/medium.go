// Package crashmedium is a byte-addressable medium that can be "crashed" at
// any persist barrier, for proving that a BTT (package btt) keeps every
// sector atomic across power loss and process crashes.
//
// The medium keeps two images: the working buffer, which is what the
// process sees and stores into through Slice windows, and the durable image,
// which is what would survive a power loss. Persist(off, n) copies the range
// from the working buffer into the durable image; Flush copies everything.
// Each such call is a barrier, and the medium records, at the moment the
// barrier is called and before it takes effect, every 8-byte word whose
// working value differs from its durable value: the stores that had retired
// but were not yet durable. Stores themselves are not intercepted, which is
// why the pending set is computed by comparison.
//
// A crash at point k (0 <= k <= Barriers()) happens just before barrier k
// takes effect (k == Barriers() is "now"). The power-loss image for point k is
// the durable image as barriers 0..k-1 left it, plus any subset of the words
// pending at point k, each word kept or dropped on its own: an 8-byte aligned
// store is the unit a crash cannot tear. Keeping every pending word is the
// process-crash model (a kill -9 loses no retired store).
package crashmedium

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
)

// WordSize is the unit of tearing: an aligned 8-byte store is all-or-nothing.
const WordSize = 8

// pageSize is the stride of the coarse comparison that finds changed words
// without looking at every word.
const pageSize = 4096

// Word is one 8-byte word that differs between the working buffer and the
// durable image: Old is durable, New is what the process stored.
type Word struct {
	Off      int64
	Old, New uint64
}

// Barrier is one persist barrier as the engine called it.
type Barrier struct {
	// Flush is true for Flush, which makes every pending word durable.
	Flush bool
	// Off and N are the persisted range (the whole medium for Flush).
	Off, N int64
	// Pending are the words not yet durable when the barrier was called.
	Pending []Word
}

// covers reports whether the barrier makes the word at off durable.
func (b *Barrier) covers(off int64) bool {
	return b.Flush || (off+WordSize > b.Off && off < b.Off+b.N)
}

// Medium is the fault-injecting medium. It implements btt.Medium. It is
// safe for concurrent use, but the barrier order is only reproducible when
// the caller serialises the goroutines that store into it (see SetBarrierHook).
type Medium struct {
	mu      sync.Mutex // guards durable, base, history and hook; work is written through Slice windows without it
	work    []byte     // what the process sees
	durable []byte     // what a power loss keeps
	base    []byte     // the durable image before barrier 0
	history []Barrier
	hook    func()
}

// New returns a zeroed medium of size bytes (a multiple of 4096).
func New(size int64) (*Medium, error) {
	if size <= 0 || size%pageSize != 0 {
		return nil, fmt.Errorf("crashmedium: size %d is not a positive multiple of %d", size, pageSize)
	}
	return &Medium{work: make([]byte, size), durable: make([]byte, size), base: make([]byte, size)}, nil
}

// NewFrom returns a medium whose working and durable images are both a copy
// of image: a crash image becomes a medium that can crash again.
func NewFrom(image []byte) (*Medium, error) {
	m, err := New(int64(len(image)))
	if err != nil {
		return nil, err
	}
	copy(m.work, image)
	copy(m.durable, image)
	copy(m.base, image)
	return m, nil
}

// SetBarrierHook installs f, called at each Persist and Flush before the
// barrier is recorded and without the medium's lock held. A scheduler uses
// it to hand the CPU to another goroutine at a barrier, so that goroutines
// interleave in a reproducible order.
func (m *Medium) SetBarrierHook(f func()) {
	m.mu.Lock()
	m.hook = f
	m.mu.Unlock()
}

// Checkpoint makes every store durable and forgets the barriers so far: the
// current image becomes point 0. Use it after setting up a workload's
// starting state.
func (m *Medium) Checkpoint() {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.durable, m.work)
	copy(m.base, m.work)
	m.history = nil
}

// Size is the medium size in bytes.
func (m *Medium) Size() int64 { return int64(len(m.work)) }

// Slice returns a window into the working buffer.
func (m *Medium) Slice(off, n int64) ([]byte, error) {
	if err := m.check(off, n); err != nil {
		return nil, err
	}
	return m.work[off : off+n : off+n], nil
}

func (m *Medium) check(off, n int64) error {
	if off < 0 || n < 0 || off > int64(len(m.work))-n {
		return fmt.Errorf("crashmedium: [%d, +%d) outside the %d-byte medium", off, n, len(m.work))
	}
	return nil
}

// Persist records a barrier and makes [off, off+n) durable.
func (m *Medium) Persist(off, n int64) error {
	if err := m.check(off, n); err != nil {
		return err
	}
	return m.barrier(Barrier{Off: off, N: n})
}

// Flush records a barrier and makes everything durable.
func (m *Medium) Flush() error {
	return m.barrier(Barrier{Flush: true, N: m.Size()})
}

// Zero clears [off, off+n) in the working buffer. The zeroes are stores like
// any other: pending until a barrier covers them.
func (m *Medium) Zero(off, n int64) error {
	b, err := m.Slice(off, n)
	if err != nil {
		return err
	}
	clear(b)
	return nil
}

func (m *Medium) barrier(b Barrier) error {
	m.mu.Lock()
	hook := m.hook
	m.mu.Unlock()
	if hook != nil {
		hook()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b.Pending = diff(m.work, m.durable)
	for _, w := range b.Pending {
		if b.covers(w.Off) {
			// A range that ends inside a word persists the whole word:
			// cache lines and pages are wider than any range the engine
			// persists, and the word is the crash's unit anyway.
			binary.LittleEndian.PutUint64(m.durable[w.Off:], w.New)
		}
	}
	m.history = append(m.history, b)
	return nil
}

// diff lists the words where work differs from durable.
func diff(work, durable []byte) []Word {
	var out []Word
	for p := 0; p < len(work); p += pageSize {
		end := min(p+pageSize, len(work))
		if pagesEqual(work[p:end], durable[p:end]) {
			continue
		}
		for o := p; o+WordSize <= end; o += WordSize {
			nw := binary.LittleEndian.Uint64(work[o:])
			old := binary.LittleEndian.Uint64(durable[o:])
			if nw != old {
				out = append(out, Word{Off: int64(o), Old: old, New: nw})
			}
		}
	}
	return out
}

// Barriers is the number of barriers recorded since creation or the last
// Checkpoint. Crash points run from 0 to Barriers().
func (m *Medium) Barriers() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.history)
}

// Barrier returns barrier k as recorded.
func (m *Medium) Barrier(k int) Barrier {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.history[k]
}

// Pending lists the words a crash at point k may or may not keep: those
// pending when barrier k was called, or, for k == Barriers(), those pending
// now.
func (m *Medium) Pending(k int) []Word {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k == len(m.history) {
		return diff(m.work, m.durable)
	}
	return m.history[k].Pending
}

// ProcessCrash returns a copy of the working buffer: the image a process
// crash leaves, every retired store kept.
func (m *Medium) ProcessCrash() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.work)
}

// CrashImage returns a fresh power-loss image for point k, keeping the
// pending words keep chooses. It costs a copy of the medium; to walk many
// points use Replay.
func (m *Medium) CrashImage(k int, keep Subset) ([]byte, error) {
	r := m.Replay()
	for r.Point() < k {
		if err := r.Advance(); err != nil {
			return nil, err
		}
	}
	img, err := r.Image(keep)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(img.buf), nil
}
