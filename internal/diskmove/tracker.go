package diskmove

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync/atomic"
	"time"
)

// Disk is a served disk as the virtio-blk device drives it (blk.Disk):
// btt.Device and btt.Lane satisfy it.
type Disk interface {
	ReadV(lba uint64, iov [][]byte) error
	WriteV(lba uint64, iov [][]byte) error
	WriteZeroes(lba, n uint64) error
	Flush() error
	SectorSize() uint32
	NumSectors() uint64
	ReadOnly() bool
}

var (
	// ErrFenced is a write to a disk whose contents have moved to another
	// host: the copy there is the disk now, and a write here would be
	// lost to it. The guest sees an I/O error.
	ErrFenced = errors.New("diskmove: the disk has moved to another host; writes here are refused")
	// ErrNotArrived is a request to a disk that is still arriving from
	// another host, held longer than Tracker.HoldTimeout.
	ErrNotArrived = errors.New("diskmove: the disk has not finished arriving from its source host")
	// ErrMoving is a second move of a disk being moved.
	ErrMoving = errors.New("diskmove: the disk is already being moved")
)

// Tracker stands between a served disk and the device's queues (Wrap),
// and follows what the queues do to it for a move:
//
//   - on the source, while a move runs, it marks every sector a write or
//     zeroing touched in a dirty map, after the disk took it (the copier
//     clears a sector's bit before reading the sector, so a write it
//     misses is marked again and sent in the next round); after cutover
//     it fences the disk: writes fail with ErrFenced;
//   - on the destination, it holds the queues' requests until the disk
//     has arrived (Arrived), failing those held past HoldTimeout.
//
// When no move runs, a request costs it two atomic loads.
type Tracker struct {
	// HoldTimeout bounds how long a request waits for an arriving disk.
	HoldTimeout time.Duration

	// dirty is the map of a running move, nil otherwise. Written by
	// Push (start and end), loaded by every write with acquire order:
	// a write that sees a map marks it.
	dirty atomic.Pointer[dirtyMap]
	// fenced is set once, at cutover; writers load it after counting
	// themselves in (writers), and fence stores it before waiting for
	// writers to drain: sequentially consistent on both sides, so that
	// either the writer sees the fence or the fence sees the writer.
	fenced  atomic.Bool
	writers atomic.Int64
	moving  atomic.Bool // a Push runs
	// arriving is the channel closed when the disk has arrived; nil when
	// the disk is not arriving (loaded by every request).
	arriving atomic.Pointer[chan struct{}]
}

// NewTracker returns a tracker of a disk that is not moving.
func NewTracker() *Tracker { return &Tracker{HoldTimeout: time.Minute} }

// NewArrivingTracker returns the tracker of a disk arriving from another
// host: requests wait until Arrived.
func NewArrivingTracker() *Tracker {
	t := NewTracker()
	ch := make(chan struct{})
	t.arriving.Store(&ch)
	return t
}

// Arriving reports whether the disk is still arriving.
func (t *Tracker) Arriving() bool { return t.arriving.Load() != nil }

// Arrived lets the held requests, and every later one, through.
func (t *Tracker) Arrived() {
	if ch := t.arriving.Swap(nil); ch != nil {
		close(*ch)
	}
}

// Fenced reports whether the disk has moved away (writes refused).
func (t *Tracker) Fenced() bool { return t.fenced.Load() }

// Wrap returns d as the queues should drive it.
func (t *Tracker) Wrap(d Disk) Disk { return &trackedDisk{Disk: d, t: t} }

// hold waits while the disk is arriving.
func (t *Tracker) hold() error {
	p := t.arriving.Load()
	if p == nil {
		return nil
	}
	timer := time.NewTimer(t.HoldTimeout)
	defer timer.Stop()
	select {
	case <-*p:
		return nil
	case <-timer.C:
		return fmt.Errorf("%w after %v", ErrNotArrived, t.HoldTimeout)
	}
}

// write runs fn, a write of n sectors at lba, unless the disk is fenced,
// and marks them in the running move's map.
func (t *Tracker) write(lba, n uint64, fn func() error) error {
	if err := t.hold(); err != nil {
		return err
	}
	t.writers.Add(1)
	defer t.writers.Add(-1)
	if t.fenced.Load() {
		return ErrFenced
	}
	err := fn()
	// Marked even when the write failed: a BTT write of several sectors
	// that fails part way has written some of them.
	if m := t.dirty.Load(); m != nil {
		m.mark(lba, n)
	}
	return err
}

// fence refuses writes from now on and waits for those under way.
func (t *Tracker) fence() {
	t.fenced.Store(true)
	for t.writers.Load() != 0 {
		runtime.Gosched()
		time.Sleep(50 * time.Microsecond)
	}
}

// Unfence takes the fence down again: a move that failed after cutover
// leaves the disk here the only whole copy.
func (t *Tracker) Unfence() { t.fenced.Store(false) }

type trackedDisk struct {
	Disk
	t *Tracker
}

func (d *trackedDisk) ReadV(lba uint64, iov [][]byte) error {
	if err := d.t.hold(); err != nil {
		return err
	}
	return d.Disk.ReadV(lba, iov)
}

func (d *trackedDisk) WriteV(lba uint64, iov [][]byte) error {
	n := uint64(0)
	for _, b := range iov {
		n += uint64(len(b))
	}
	ss := uint64(d.Disk.SectorSize())
	return d.t.write(lba, (n+ss-1)/ss, func() error { return d.Disk.WriteV(lba, iov) })
}

func (d *trackedDisk) WriteZeroes(lba, n uint64) error {
	return d.t.write(lba, n, func() error { return d.Disk.WriteZeroes(lba, n) })
}

func (d *trackedDisk) Flush() error {
	if err := d.t.hold(); err != nil {
		return err
	}
	return d.Disk.Flush()
}

// dirtyMap is one bit per sector, set by writers with atomic OR and taken
// by the copier with atomic swaps, so neither waits for the other.
type dirtyMap struct {
	sectors uint64
	words   []atomic.Uint64
}

func newDirtyMap(sectors uint64) *dirtyMap {
	return &dirtyMap{sectors: sectors, words: make([]atomic.Uint64, (sectors+63)/64)}
}

// mark sets the bits of sectors [lba, lba+n) that lie inside the map (a
// request past the end was refused by the disk; a disk grown since the
// move started is refused by Push).
func (m *dirtyMap) mark(lba, n uint64) {
	if lba >= m.sectors {
		return
	}
	end := min(lba+n, m.sectors)
	for lba < end {
		w, b := lba/64, lba%64
		k := min(64-b, end-lba)
		m.words[w].Or(^uint64(0) >> (64 - k) << b)
		lba += k
	}
}

// markAll sets every sector's bit: the first round copies the whole disk.
func (m *dirtyMap) markAll() { m.mark(0, m.sectors) }

// take clears and returns word w.
func (m *dirtyMap) take(w int) uint64 { return m.words[w].Swap(0) }

// count is how many bits are set (a moment's view).
func (m *dirtyMap) count() uint64 {
	var n uint64
	for i := range m.words {
		n += uint64(bits.OnesCount64(m.words[i].Load()))
	}
	return n
}
