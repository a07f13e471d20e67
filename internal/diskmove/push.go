package diskmove

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"time"
)

// Destination is where a disk goes: an NBD client connected to the
// destination host's incoming export (nbd.Client), or any block device
// with these methods. Offsets and lengths are in bytes.
type Destination interface {
	WriteAt(p []byte, off int64) (int, error)
	WriteZeroes(off, length int64) error
	Flush() error
}

// Options tune a move. Zero values pick the defaults.
type Options struct {
	// Parallel is how many copies are in flight at once; default 4.
	Parallel int
	// ChunkBytes bounds one copy; default 1 MiB, rounded to sectors.
	ChunkBytes int
	// Converged is the dirty-sector count at or below which the copy has
	// converged and waits for cutover; default 1024.
	Converged uint64
	// Cutover reports that the guest can no longer write: its front-end
	// stopped the disk's rings for the migration's switch-over (or left).
	// It is polled every Poll once the copy has converged.
	Cutover func() bool
	// Poll is how often a converged move looks for cutover, copying what
	// was written meanwhile; default 10 ms.
	Poll time.Duration
	// Wait bounds how long a converged move waits for cutover; default
	// 30 minutes (a migration that never switches over).
	Wait time.Duration
	// Progress, if set, is told of each round as it ends.
	Progress func(Round)
}

// Round is one pass over the dirty map.
type Round struct {
	N           int           `json:"round"`
	Sectors     uint64        `json:"sectors"`      // sectors copied
	ZeroSectors uint64        `json:"zero_sectors"` // of which sent as zeroes
	Took        time.Duration `json:"took_ns"`
	// Converged is set on the rounds after the copy converged, which
	// follow the guest's writes until the switch-over.
	Converged bool `json:"converged"`
	Cutover   bool `json:"cutover"` // the last round, with the disk fenced
}

// Stats is what a move did.
type Stats struct {
	Sectors    uint64 `json:"sectors"`     // the disk's
	SectorSize uint32 `json:"sector_size"` // bytes
	// Rounds counts passes over the dirty map, the first (the whole disk)
	// and the cutover one included; RoundSectors holds the sectors of the
	// first 64 of them.
	Rounds       int      `json:"rounds"`
	RoundSectors []uint64 `json:"round_sectors"`
	// SectorsSent counts every sector copied, in every round; BytesSent
	// the data bytes written (zero runs are sent as WRITE_ZEROES, without
	// data, and counted in ZeroSectors).
	SectorsSent uint64 `json:"sectors_sent"`
	BytesSent   uint64 `json:"bytes_sent"`
	ZeroSectors uint64 `json:"zero_sectors"`
	// Converged is how long the copy took to first reach Options.Converged
	// dirty sectors.
	Converged time.Duration `json:"converged_ns"`
	// CutoverSectors were dirty at cutover and copied with the disk
	// fenced; CutoverTook is from the fence to the destination's flush:
	// what the move adds to the migration's downtime, as the destination
	// guest's requests wait for it.
	CutoverSectors uint64        `json:"cutover_sectors"`
	CutoverTook    time.Duration `json:"cutover_ns"`
	Total          time.Duration `json:"total_ns"`
}

const maxRoundRecords = 64

// Push copies src, the disk this tracker wraps, to dst while the guest
// writes to it: the whole disk, then what was written meanwhile, round
// after round, until at most Options.Converged sectors are dirty; then it
// goes on copying until Options.Cutover says the guest stopped, fences the
// disk (writes fail with ErrFenced from then on), copies the last dirty
// sectors and flushes dst. When it returns nil, dst holds the disk as it
// was at cutover, and this host's copy must no longer be written; the
// caller tells dst the move is complete (the NBD client's disconnect). On
// an error before cutover the disk goes on here as if nothing happened;
// after the fence, the fence comes down again (this copy is still the
// only whole one).
func (t *Tracker) Push(ctx context.Context, src Disk, dst Destination, opts Options) (Stats, error) {
	start := time.Now()
	ss := src.SectorSize()
	st := Stats{Sectors: src.NumSectors(), SectorSize: ss}
	if !t.moving.CompareAndSwap(false, true) {
		return st, ErrMoving
	}
	defer t.moving.Store(false)
	if t.Fenced() {
		return st, ErrFenced
	}
	if opts.Cutover == nil {
		return st, errors.New("diskmove: no cutover signal")
	}
	opts = withDefaults(opts, ss)

	m := newDirtyMap(st.Sectors)
	m.markAll()
	t.dirty.Store(m)
	defer t.dirty.Store(nil)

	c := copier{src: src, dst: dst, ss: uint64(ss), opts: opts}
	converged := false
	told := false // of the first round after converging
	round := func(cut bool) error {
		r0 := time.Now()
		r, err := c.round(ctx, m)
		r.N, r.Took, r.Converged, r.Cutover = st.Rounds, time.Since(r0), converged, cut
		st.Rounds++
		if len(st.RoundSectors) < maxRoundRecords {
			st.RoundSectors = append(st.RoundSectors, r.Sectors)
		}
		st.SectorsSent += r.Sectors
		st.ZeroSectors += r.ZeroSectors
		st.BytesSent += (r.Sectors - r.ZeroSectors) * uint64(ss)
		if opts.Progress != nil && (r.Sectors > 0 || cut || converged && !told) {
			told = told || converged
			opts.Progress(r)
		}
		if err != nil {
			return fmt.Errorf("round %d: %w", r.N, err)
		}
		return nil
	}

	// Copy until converged.
	for {
		if err := round(false); err != nil {
			return st, err
		}
		if m.count() <= opts.Converged {
			break
		}
	}
	st.Converged = time.Since(start)
	converged = true

	// Keep up with the guest until it stops.
	deadline := time.Now().Add(opts.Wait)
	for !opts.Cutover() {
		if time.Now().After(deadline) {
			return st, fmt.Errorf("diskmove: no cutover within %v of converging", opts.Wait)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(opts.Poll):
		}
		if err := round(false); err != nil {
			return st, err
		}
	}

	// Cutover: nothing may write here any more.
	t0 := time.Now()
	t.fence()
	st.CutoverSectors = m.count()
	err := round(true)
	if err == nil {
		if err = dst.Flush(); err != nil {
			err = fmt.Errorf("destination flush: %w", err)
		}
	}
	if err == nil && src.NumSectors() != st.Sectors {
		err = fmt.Errorf("diskmove: the disk grew from %d to %d sectors during the move", st.Sectors, src.NumSectors())
	}
	st.CutoverTook = time.Since(t0)
	st.Total = time.Since(start)
	if err != nil {
		t.Unfence()
		return st, err
	}
	return st, nil
}

func withDefaults(o Options, ss uint32) Options {
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	o.Parallel = min(o.Parallel, 64)
	if o.ChunkBytes <= 0 {
		o.ChunkBytes = 1 << 20
	}
	o.ChunkBytes = min(max(o.ChunkBytes, int(ss)), 32<<20) / int(ss) * int(ss)
	if o.Converged == 0 {
		o.Converged = 1024
	}
	if o.Poll <= 0 {
		o.Poll = 10 * time.Millisecond
	}
	if o.Wait <= 0 {
		o.Wait = 30 * time.Minute
	}
	return o
}

// copier runs the copies of one round, Parallel at a time.
type copier struct {
	src  Disk
	dst  Destination
	ss   uint64
	opts Options
}

type extent struct{ lba, n uint64 }

// round takes every dirty bit off the map (each cleared before its
// sector is read: a write after that marks it again) and copies the
// sectors in runs of at most ChunkBytes.
func (c *copier) round(ctx context.Context, m *dirtyMap) (Round, error) {
	var r Round
	maxRun := uint64(c.opts.ChunkBytes) / c.ss
	jobs := make(chan extent)
	var (
		mu    sync.Mutex // guards firstErr and r's counts
		first error
	)
	var wg sync.WaitGroup
	for range c.opts.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, maxRun*c.ss)
			for e := range jobs {
				zeroes, err := c.copyExtent(buf[:e.n*c.ss], e)
				mu.Lock()
				if err != nil && first == nil {
					first = err
				}
				r.Sectors += e.n
				r.ZeroSectors += zeroes
				mu.Unlock()
			}
		}()
	}
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return first != nil
	}
	var run extent
	flush := func() bool {
		if run.n == 0 {
			return true
		}
		select {
		case jobs <- run:
		case <-ctx.Done():
			return false
		}
		run = extent{}
		return !failed()
	}
	ok := true
	for w := 0; w < len(m.words) && ok; w++ {
		bitsW := m.take(w)
		for bitsW != 0 && ok {
			b := uint64(bits.TrailingZeros64(bitsW))
			lba := uint64(w)*64 + b
			bitsW &^= 1 << b
			if run.n > 0 && run.lba+run.n == lba && run.n < maxRun {
				run.n++
				continue
			}
			ok = flush()
			run = extent{lba: lba, n: 1}
		}
	}
	if ok {
		ok = flush()
	}
	close(jobs)
	wg.Wait()
	if first == nil && !ok {
		first = ctx.Err()
	}
	// A failed round ends the move; a retried one starts from the whole
	// disk, so what this round took off the map need not go back.
	return r, first
}

// copyExtent reads e from the source into buf and writes it to the
// destination: each run of all-zero sectors as one WRITE_ZEROES, each run
// of others as one write. It returns how many sectors went as zeroes.
func (c *copier) copyExtent(buf []byte, e extent) (zeroSectors uint64, err error) {
	if err := c.src.ReadV(e.lba, [][]byte{buf}); err != nil {
		return 0, fmt.Errorf("read sectors %d+%d: %w", e.lba, e.n, err)
	}
	ss := int(c.ss)
	for i := 0; i < len(buf); {
		zero := isZero(buf[i : i+ss])
		j := i + ss
		for j < len(buf) && isZero(buf[j:j+ss]) == zero {
			j += ss
		}
		off := int64(e.lba*c.ss) + int64(i)
		if zero {
			if err := c.dst.WriteZeroes(off, int64(j-i)); err != nil {
				return zeroSectors, fmt.Errorf("destination write-zeroes at %d+%d: %w", off, j-i, err)
			}
			zeroSectors += uint64((j - i) / ss)
		} else if _, err := c.dst.WriteAt(buf[i:j], off); err != nil {
			return zeroSectors, fmt.Errorf("destination write at %d+%d: %w", off, j-i, err)
		}
		i = j
	}
	return zeroSectors, nil
}

// isZero reports whether b, a whole number of sectors, holds only zeroes.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
