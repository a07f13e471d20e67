package crashmedium

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

// Subset chooses which pending words a crash keeps: keep(i, n) is asked once
// for each of the n pending words, in offset order.
type Subset func(i, n int) bool

// None keeps no pending word: only what barriers made durable survives.
func None(i, n int) bool { return false }

// All keeps every pending word: the process-crash model.
func All(i, n int) bool { return true }

// Mask keeps word i when bit i of bits is set; with bits running over
// 0..2^n-1 it enumerates every subset of up to 64 pending words.
func Mask(bits uint64) Subset {
	return func(i, n int) bool { return i < 64 && bits&(1<<i) != 0 }
}

// Random keeps each word with probability p, reproducibly from seed.
func Random(seed uint64, p float64) Subset {
	r := rand.New(rand.NewPCG(seed, 0x6372617368))
	return func(i, n int) bool { return r.Float64() < p }
}

// FirstN keeps the first k pending words: a store that was being written
// front to back when the power went.
func FirstN(k int) Subset {
	return func(i, n int) bool { return i < k }
}

// Replayer walks a recorded run's crash points in order and materialises
// each point's power-loss image into one reused buffer, so that exploring
// hundreds of points costs no copy of the whole medium per point.
type Replayer struct {
	m       *Medium
	point   int
	durable []byte // the durable image at point
	img     *Image
	dirty   bool // img may differ from durable
}

// Replay starts at point 0.
func (m *Medium) Replay() *Replayer {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := &Replayer{m: m, durable: bytes.Clone(m.base)}
	r.img = &Image{buf: bytes.Clone(m.base)}
	return r
}

// Point is the crash point the replayer stands on.
func (r *Replayer) Point() int { return r.point }

// Done reports whether the replayer is past the last point.
func (r *Replayer) Done() bool { return r.point > r.m.Barriers() }

// Advance lets barrier Point() take effect and moves to the next point.
func (r *Replayer) Advance() error {
	n := r.m.Barriers()
	if r.point >= n {
		if r.point == n {
			r.point++
			return nil
		}
		return fmt.Errorf("crashmedium: no crash point after %d", r.point)
	}
	b := r.m.Barrier(r.point)
	for _, w := range b.Pending {
		if b.covers(w.Off) {
			binary.LittleEndian.PutUint64(r.durable[w.Off:], w.New)
			if !r.dirty {
				binary.LittleEndian.PutUint64(r.img.buf[w.Off:], w.New)
			}
		}
	}
	r.point++
	return nil
}

// Image materialises the power-loss image of the current point with the
// pending words keep chooses, and returns it as a medium. The image is only
// valid until the next call to Image or Advance: it reuses one buffer, which
// is first restored from whatever the previous user (a recovery, say) wrote.
func (r *Replayer) Image(keep Subset) (*Image, error) {
	if r.point > r.m.Barriers() {
		return nil, fmt.Errorf("crashmedium: point %d past the last", r.point)
	}
	if r.dirty {
		restore(r.img.buf, r.durable)
	}
	pending := r.m.Pending(r.point)
	r.img.kept = r.img.kept[:0]
	for i, w := range pending {
		if keep(i, len(pending)) {
			binary.LittleEndian.PutUint64(r.img.buf[w.Off:], w.New)
			r.img.kept = append(r.img.kept, w)
		}
	}
	r.dirty = true
	return r.img, nil
}

// restore copies back every page of dst that differs from src.
func restore(dst, src []byte) {
	for p := 0; p < len(dst); p += pageSize {
		end := min(p+pageSize, len(dst))
		if !pagesEqual(dst[p:end], src[p:end]) {
			copy(dst[p:end], src[p:end])
		}
	}
}

// Image is a crash image served as a plain medium: stores go straight into
// it, and Persist and Flush only check bounds (nothing is recorded).
type Image struct {
	buf  []byte
	kept []Word
}

// NewImage serves buf as a plain medium: no barriers recorded, no crashes.
// Tests use it to build a starting image cheaply before recording begins.
func NewImage(buf []byte) *Image { return &Image{buf: buf} }

// Kept lists the pending words this image kept.
func (im *Image) Kept() []Word { return im.kept }

// Bytes is the image itself (not a copy).
func (im *Image) Bytes() []byte { return im.buf }

// Size is the image size in bytes.
func (im *Image) Size() int64 { return int64(len(im.buf)) }

// Slice returns a window into the image.
func (im *Image) Slice(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > int64(len(im.buf))-n {
		return nil, fmt.Errorf("crashmedium: image [%d, +%d) outside %d bytes", off, n, len(im.buf))
	}
	return im.buf[off : off+n : off+n], nil
}

// Persist checks bounds only: an image does not crash again (make a Medium
// from it with NewFrom for that).
func (im *Image) Persist(off, n int64) error {
	_, err := im.Slice(off, n)
	return err
}

// Flush does nothing.
func (im *Image) Flush() error { return nil }

// Zero clears [off, off+n).
func (im *Image) Zero(off, n int64) error {
	b, err := im.Slice(off, n)
	if err != nil {
		return err
	}
	clear(b)
	return nil
}
