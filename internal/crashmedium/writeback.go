package crashmedium

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
)

// Writeback is a medium seen through a page cache, as pmem's flush mode
// maps an image file: Persist reaches nothing, Flush (msync) makes every
// store durable, and in between the kernel writes dirty pages back when and
// in the order it likes. A power loss at any moment therefore keeps, for
// each page stored to since the last Flush, either what the last Flush
// made durable or the page as it stood at any moment since: a page written
// back early and dirtied again keeps its earlier version. It implements
// btt.DeferredMedium and btt.ProcessLogMedium.
//
// The medium records a point at every Persist, every Flush (before it
// takes effect) and every Mark, and with it a copy of each page that
// changed since the point before: those copies are the versions a power
// loss may keep. A crash at point k keeps, page by page, a version recorded
// after the last Flush before k and no later than k, or the durable one.
// Its process log (the memory that outlives a process but not a machine)
// is recorded at each point too: a process crash keeps it and every store,
// a power loss neither.
type Writeback struct {
	mu     sync.Mutex // guards everything but work's contents, stored through Slice windows
	work   []byte
	base   []byte // the durable image before point 0
	snap   []byte // work as of the last point
	points []wbPoint
	log    []byte // the process log, nil when none was asked for or it was dropped
}

type wbPoint struct {
	flush    bool
	versions []pageVersion // pages that changed since the point before, as they stood at this one
	log      []byte        // the process log at this point, nil if none
}

type pageVersion struct {
	page int
	data []byte
}

// NewWriteback returns a zeroed medium of size bytes (a multiple of 4096).
func NewWriteback(size int64) (*Writeback, error) {
	if size <= 0 || size%pageSize != 0 {
		return nil, fmt.Errorf("crashmedium: size %d is not a positive multiple of %d", size, pageSize)
	}
	return &Writeback{work: make([]byte, size), base: make([]byte, size), snap: make([]byte, size)}, nil
}

// NewWritebackFrom returns a medium holding image, durable, and log as its
// process log (nil for none, as after a power loss).
func NewWritebackFrom(image, log []byte) (*Writeback, error) {
	w, err := NewWriteback(int64(len(image)))
	if err != nil {
		return nil, err
	}
	copy(w.work, image)
	copy(w.base, image)
	copy(w.snap, image)
	if log != nil {
		w.log = alignedCopy(log)
	}
	return w, nil
}

// alignedCopy copies b into a buffer whose first byte is 8-byte aligned, as
// a mapping's would be.
func alignedCopy(b []byte) []byte {
	words := make([]uint64, (len(b)+7)/8)
	out := wordsAsBytes(words)[:len(b)]
	copy(out, b)
	return out
}

// Size is the medium size in bytes.
func (w *Writeback) Size() int64 { return int64(len(w.work)) }

// Slice returns a window into the working buffer.
func (w *Writeback) Slice(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > int64(len(w.work))-n {
		return nil, fmt.Errorf("crashmedium: [%d, +%d) outside the %d-byte medium", off, n, len(w.work))
	}
	return w.work[off : off+n : off+n], nil
}

// PersistDeferred is true: Persist leaves everything to Flush.
func (w *Writeback) PersistDeferred() bool { return true }

// Persist checks the range and records a point.
func (w *Writeback) Persist(off, n int64) error {
	if _, err := w.Slice(off, n); err != nil {
		return err
	}
	w.Mark()
	return nil
}

// Flush records a point, then makes every store durable.
func (w *Writeback) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recordLocked(true)
	return nil
}

// Zero clears [off, off+n) in the working buffer.
func (w *Writeback) Zero(off, n int64) error {
	b, err := w.Slice(off, n)
	if err != nil {
		return err
	}
	clear(b)
	return nil
}

// Mark records a point: a test calls it between operations, where the
// engine itself calls nothing.
func (w *Writeback) Mark() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recordLocked(false)
}

func (w *Writeback) recordLocked(flush bool) {
	p := wbPoint{flush: flush}
	for pg := 0; pg < len(w.work); pg += pageSize {
		if !pagesEqual(w.work[pg:pg+pageSize], w.snap[pg:pg+pageSize]) {
			copy(w.snap[pg:pg+pageSize], w.work[pg:pg+pageSize])
			p.versions = append(p.versions, pageVersion{page: pg / pageSize, data: bytes.Clone(w.work[pg : pg+pageSize])})
		}
	}
	if w.log != nil {
		p.log = bytes.Clone(w.log)
	}
	w.points = append(w.points, p)
}

// ProcessLog returns the process log, n bytes: zeroes the first time.
func (w *Writeback) ProcessLog(n int) ([]byte, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.log) != n {
		w.log = alignedCopy(make([]byte, n))
	}
	return w.log, nil
}

// DropProcessLog forgets the process log, as a clean close does.
func (w *Writeback) DropProcessLog() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log = nil
	return nil
}

// Points is the number of points recorded; crashes run from 0 to Points()-1.
func (w *Writeback) Points() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.points)
}

// IsFlush reports whether point k is a Flush.
func (w *Writeback) IsFlush(k int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.points[k].flush
}

// Version chooses, for one page a crash may keep in several versions, which
// it keeps: -1 for the durable one, else an index into the n versions
// recorded since the last Flush, oldest first.
type Version func(page, n int) int

// Durable keeps no page written since the last Flush.
func Durable(page, n int) int { return -1 }

// Newest keeps every page as it stood at the crash: with the process log,
// the image a process crash leaves.
func Newest(page, n int) int { return n - 1 }

// AnyVersion keeps each page durable with probability 1/2, else one of its
// versions at random, reproducibly from seed.
func AnyVersion(seed uint64) Version {
	r := rand.New(rand.NewPCG(seed, 0x77726974656261))
	return func(page, n int) int {
		if r.IntN(2) == 0 {
			return -1
		}
		return r.IntN(n)
	}
}

// WritebackReplayer walks a Writeback medium's points in order.
type WritebackReplayer struct {
	w       *Writeback
	point   int
	durable []byte           // as the last Flush before point left it
	since   map[int][][]byte // page -> versions recorded since that Flush, up to point
	order   []int            // the pages of since, in the order they were first dirtied
	img     []byte           // reused image buffer
	dirty   map[int]struct{} // pages of img that may differ from durable
}

// Replay starts at point 0.
func (w *Writeback) Replay() *WritebackReplayer {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := &WritebackReplayer{w: w, durable: bytes.Clone(w.base), img: bytes.Clone(w.base),
		since: map[int][][]byte{}, dirty: map[int]struct{}{}}
	r.take(0)
	return r
}

// Point is the current crash point.
func (r *WritebackReplayer) Point() int { return r.point }

// Done reports whether the replayer is past the last point.
func (r *WritebackReplayer) Done() bool { return r.point >= r.w.Points() }

// take adds point k's versions to the candidates.
func (r *WritebackReplayer) take(k int) {
	if k >= len(r.w.points) {
		return
	}
	for _, v := range r.w.points[k].versions {
		if _, ok := r.since[v.page]; !ok {
			r.order = append(r.order, v.page)
		}
		r.since[v.page] = append(r.since[v.page], v.data)
	}
}

// Advance lets point Point() take effect (a Flush makes the newest version
// of every page durable) and moves to the next.
func (r *WritebackReplayer) Advance() {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	if r.w.points[r.point].flush {
		for pg, vs := range r.since {
			copy(r.durable[pg*pageSize:], vs[len(vs)-1])
			r.dirty[pg] = struct{}{}
		}
		clear(r.since)
		r.order = r.order[:0]
	}
	r.point++
	r.take(r.point)
}

// Image returns the power-loss image at the current point with the page
// versions choose picks, and how many pages it took from after the last
// Flush. The image is valid until the next Image or Advance.
func (r *WritebackReplayer) Image(choose Version) ([]byte, int) {
	for pg := range r.dirty {
		copy(r.img[pg*pageSize:(pg+1)*pageSize], r.durable[pg*pageSize:])
	}
	clear(r.dirty)
	kept := 0
	for _, pg := range r.order {
		vs := r.since[pg]
		if i := choose(pg, len(vs)); i >= 0 && i < len(vs) {
			copy(r.img[pg*pageSize:], vs[i])
			r.dirty[pg] = struct{}{}
			kept++
		}
	}
	return r.img, kept
}

// Log is the process log as it stood at the current point (nil if none).
func (r *WritebackReplayer) Log() []byte {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	return r.w.points[r.point].log
}

// WritebackImage serves a crash image as a deferred medium: stores go
// straight into the buffer, Flush does nothing, and the process log is the
// one the crash left (nil after a power loss). Reopening a device on it
// runs the deferred write path, replay included, without recording points.
type WritebackImage struct {
	Image
	log []byte
}

// NewWritebackImage serves buf, with log as its process log.
func NewWritebackImage(buf, log []byte) *WritebackImage {
	im := &WritebackImage{Image: Image{buf: buf}}
	if log != nil {
		im.log = alignedCopy(log)
	}
	return im
}

// PersistDeferred is true.
func (im *WritebackImage) PersistDeferred() bool { return true }

// ProcessLog returns the log the crash left, or zeroes.
func (im *WritebackImage) ProcessLog(n int) ([]byte, error) {
	if len(im.log) != n {
		im.log = alignedCopy(make([]byte, n))
	}
	return im.log, nil
}

// DropProcessLog forgets the log.
func (im *WritebackImage) DropProcessLog() error {
	im.log = nil
	return nil
}

// Log is the process log now (nil once dropped).
func (im *WritebackImage) Log() []byte { return im.log }
