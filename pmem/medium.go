//go:build linux

package pmem

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// MinSize is the smallest medium Open accepts: the Linux BTT refuses namespaces below 16 MiB
// (ARENA_MIN_SIZE), and a medium nvblk formats must stay mountable by the kernel driver.
const MinSize int64 = 16 << 20

// Sentinel errors, for errors.Is; every returned error wraps one of these or an errno with
// the path and the operation that failed. They carry no "pmem: " prefix: the wrapping adds
// it, once, so an error names the package exactly once however it is wrapped here.
var (
	ErrTooSmall           = errors.New("medium smaller than the 16 MiB minimum")
	ErrBusy               = errors.New("medium busy")
	ErrOutOfRange         = errors.New("range outside the medium")
	ErrNotDAX             = errors.New("mapping is not DAX")
	ErrModeUnsupported    = errors.New("durability mode not supported by this medium")
	ErrReadOnly           = errors.New("medium opened read-only")
	ErrClosed             = errors.New("medium closed")
	ErrUnsupportedMedium  = errors.New("not a regular file, block device or devdax character device")
	ErrInvalidOptions     = errors.New("invalid options")
	errPunchNotSupported  = errors.New("hole punching not supported")
	errLockHolderReleased = errors.New("lock holder released before it could be named")
)

// Durability selects what Persist and Flush do; see the package documentation for what each
// mode survives.
type Durability int

const (
	DurabilityAuto  Durability = iota // DAX mapping -> DurabilityDAX, else DurabilityFlush
	DurabilityFlush                   // page cache: Persist orders only (no syscall); Flush = msync whole mapping
	DurabilitySync                    // page cache: Persist = msync(MS_SYNC) of the page-aligned range
	DurabilityDAX                     // MAP_SYNC/devdax: Persist = CLWB/CLFLUSHOPT/CLFLUSH + SFENCE
)

func (d Durability) String() string {
	switch d {
	case DurabilityAuto:
		return "auto"
	case DurabilityFlush:
		return "flush"
	case DurabilitySync:
		return "sync"
	case DurabilityDAX:
		return "dax"
	}
	return fmt.Sprintf("Durability(%d)", int(d))
}

// Kind is what the path given to Open turned out to be.
type Kind int

const (
	KindFile        Kind = iota // regular file: an emulated NVDIMM, possibly on fsdax
	KindBlockDevice             // block device, mapped through its page cache
	KindDevDAX                  // devdax character device: persistent memory with no page cache
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindBlockDevice:
		return "block device"
	case KindDevDAX:
		return "devdax"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Options says how to open a medium.
type Options struct {
	ReadOnly   bool
	Durability Durability
	Create     bool  // create a missing regular file, sparse, of Size bytes; an existing one is opened as is
	Size       int64 // for Create
	// ProcessLogDir is where ProcessLog keeps its file. Empty means DefaultProcessLogDir, or
	// os.TempDir() where that is missing.
	ProcessLogDir string
}

// Medium is an open, claimed, mapped medium. Slice, Persist and Zero may be called from many
// goroutines at once; callers order their own stores to overlapping ranges.
type Medium struct {
	path       string
	kind       Kind
	readOnly   bool
	mapSync    bool
	durability Durability
	claim      *claim
	// ident is the medium's identity in this boot, (st_dev, st_ino) of the file or st_rdev of
	// the device, which names its process log.
	ident      [2]uint64
	processLog processLog

	// data is the mapping Open made; live is the current one, which Extend replaces by a
	// longer mapping of the same file (the hot path loads it once per call). The mappings it
	// replaced stay mapped until Close, in extended: slices handed out before still point into
	// them.
	// closed is checked first so nothing is handed out after munmap.
	data     []byte
	live     atomic.Pointer[[]byte]
	extended [][]byte // guarded by closeMu

	// punchHoles starts true for regular files and is cleared the first time the filesystem
	// refuses FALLOC_FL_PUNCH_HOLE, so Zero does not keep asking.
	punchHoles atomic.Bool
	// keepAllocated is set by Allocate: Zero then keeps the blocks (zeroRange, else stores of
	// zeroes) instead of punching them out again. zeroRange starts true and is cleared the
	// first time the filesystem refuses FALLOC_FL_ZERO_RANGE.
	keepAllocated, zeroRange atomic.Bool

	closed  atomic.Bool
	closeMu sync.Mutex // guards the teardown in Close (munmap, claim release) so it runs once
}

// Open claims, sizes and maps the medium at path.
func Open(path string, opts Options) (*Medium, error) {
	if err := validateOptions(path, opts); err != nil {
		return nil, err
	}
	c, err := claimPath(path, opts)
	if err != nil {
		return nil, err
	}
	m, err := openClaimed(path, opts, c)
	if err != nil {
		releaseClaim(c)
		return nil, err
	}
	return m, nil
}

func validateOptions(path string, opts Options) error {
	if opts.Durability < DurabilityAuto || opts.Durability > DurabilityDAX {
		return fmt.Errorf("pmem: %s: unknown durability mode %d: %w", path, int(opts.Durability), ErrInvalidOptions)
	}
	if opts.Create && opts.ReadOnly {
		return fmt.Errorf("pmem: %s: Create needs a writable open, not ReadOnly: %w", path, ErrInvalidOptions)
	}
	if opts.Create && opts.Size < MinSize {
		return fmt.Errorf("pmem: %s: cannot create a medium of %d bytes, the minimum is %d bytes (16 MiB): %w",
			path, opts.Size, MinSize, ErrTooSmall)
	}
	return nil
}

func openClaimed(path string, opts Options, c *claim) (*Medium, error) {
	var st unix.Stat_t
	if err := unix.Fstat(c.fd, &st); err != nil {
		return nil, fmt.Errorf("pmem: %s: fstat: %w", path, err)
	}
	kind, size, err := probeKindAndSize(path, c.fd, &st)
	if err != nil {
		return nil, err
	}
	if size < MinSize {
		return nil, fmt.Errorf("pmem: %s: size %d bytes is below the minimum of %d bytes (16 MiB) a BTT needs: %w",
			path, size, MinSize, ErrTooSmall)
	}
	if uint64(size) > uint64(^uint(0)>>1) {
		return nil, fmt.Errorf("pmem: %s: size %d bytes does not fit this process's address space", path, size)
	}
	data, mapSync, err := mapMedium(c.fd, size, opts.ReadOnly, kind == KindFile)
	if err != nil {
		return nil, fmt.Errorf("pmem: %s: mmap %d bytes: %w", path, size, err)
	}
	m := &Medium{
		path: path,
		kind: kind,

		readOnly: opts.ReadOnly,
		mapSync:  mapSync,
		claim:    c,
		data:     data,
	}
	m.live.Store(&m.data)
	m.ident = [2]uint64{uint64(st.Dev), uint64(st.Ino)}
	if kind != KindFile {
		m.ident = [2]uint64{uint64(st.Rdev), 0}
	}
	m.processLog.dir = processLogDir(opts.ProcessLogDir)
	m.punchHoles.Store(kind == KindFile)
	m.zeroRange.Store(kind == KindFile)
	if m.durability, err = m.resolveDurability(opts.Durability); err != nil {
		_ = unmapMedium(data)
		return nil, err
	}
	return m, nil
}

func (m *Medium) resolveDurability(asked Durability) (Durability, error) {
	dax := m.mapSync || m.kind == KindDevDAX
	switch asked {
	case DurabilityAuto:
		if dax {
			return DurabilityDAX, nil
		}
		return DurabilityFlush, nil
	case DurabilityDAX:
		if !dax {
			why := "MAP_SYNC was refused: the file is not on an fsdax filesystem"
			if m.kind == KindBlockDevice {
				why = "a block device is always mapped through its page cache; use its devdax or fsdax form"
			}
			return 0, fmt.Errorf("pmem: %s: DurabilityDAX asked for, but this %s is mapped through the page cache (%s), "+
				"so cache-line write-back would not make stores durable; use DurabilitySync or DurabilityFlush: %w",
				m.path, m.kind, why, ErrNotDAX)
		}
	case DurabilityFlush, DurabilitySync:
		// devdax has no page cache and no fsync, so msync fails there with EINVAL.
		if m.kind == KindDevDAX {
			return 0, fmt.Errorf("pmem: %s: %s needs a page cache to msync and a devdax device has none, "+
				"use DurabilityDAX or DurabilityAuto: %w", m.path, asked, ErrModeUnsupported)
		}
	}
	return asked, nil
}

// Path is the path the medium was opened by.
func (m *Medium) Path() string { return m.path }

// Size is the medium's length in bytes.
func (m *Medium) Size() int64 { return int64(len(m.mapped())) }

// mapped is the current mapping of the whole medium.
func (m *Medium) mapped() []byte { return *m.live.Load() }

// Kind is what the path turned out to be.
func (m *Medium) Kind() Kind { return m.kind }

// MapSync reports whether the kernel accepted MAP_SYNC for the mapping: the file is on an
// fsdax filesystem and stores reach the medium without a page cache.
func (m *Medium) MapSync() bool { return m.mapSync }

// Durability is the mode in force, never DurabilityAuto.
func (m *Medium) Durability() Durability { return m.durability }

// PersistDeferred reports whether Persist leaves stores in the page cache until Flush
// (DurabilityFlush on a writable medium). Between two Flushes the kernel then writes dirty pages
// back whenever and in whatever order it likes, so a power loss keeps any subset of them: package
// btt orders its metadata for that case when it sees this.
func (m *Medium) PersistDeferred() bool {
	return m.durability == DurabilityFlush && !m.readOnly
}

// ReadOnly reports whether the mapping is PROT_READ.
func (m *Medium) ReadOnly() bool { return m.readOnly }

// checkRange validates [off, off+n) without overflowing for any off and n.
func (m *Medium) checkRange(op string, off, n int64) error {
	if m.closed.Load() {
		return fmt.Errorf("pmem: %s: %s: %w", m.path, op, ErrClosed)
	}
	if off < 0 || n < 0 || off > m.Size() || n > m.Size()-off {
		return fmt.Errorf("pmem: %s: %s [%d, +%d) outside medium of %d bytes: %w", m.path, op, off, n, m.Size(), ErrOutOfRange)
	}
	return nil
}

// Slice returns the mapping's bytes [off, off+n) without copying. Its capacity is n, so
// appending cannot spill into the neighbouring range. On a read-only medium, writing to the
// slice faults.
func (m *Medium) Slice(off, n int64) ([]byte, error) {
	if err := m.checkRange("slice", off, n); err != nil {
		return nil, err
	}
	data := m.mapped()
	return data[off : off+n : off+n], nil
}

// Persist makes the stores to [off, off+n) as durable as the mode promises before it returns
// (see the package documentation).
func (m *Medium) Persist(off, n int64) error {
	if err := m.checkRange("persist", off, n); err != nil {
		return err
	}
	if m.readOnly {
		return fmt.Errorf("pmem: %s: persist: %w", m.path, ErrReadOnly)
	}
	if n == 0 {
		return nil
	}
	switch m.durability {
	case DurabilityDAX:
		if err := m.writeBackCacheLines(off, n); err != nil {
			return fmt.Errorf("pmem: %s: persist [%d, +%d): %w", m.path, off, n, err)
		}
	case DurabilitySync:
		if err := msyncRange(m.mapped(), off, n); err != nil {
			return fmt.Errorf("pmem: %s: msync [%d, +%d): %w", m.path, off, n, err)
		}
	}
	return nil
}

// Flush makes every store made so far durable in the page-cache modes; in DurabilityDAX it
// orders the cache-line write-backs Persist already issued.
func (m *Medium) Flush() error {
	if m.closed.Load() {
		return fmt.Errorf("pmem: %s: flush: %w", m.path, ErrClosed)
	}
	if m.readOnly {
		return nil
	}
	switch m.durability {
	case DurabilityDAX:
		if err := m.fenceWriteBacks(); err != nil {
			return fmt.Errorf("pmem: %s: flush: %w", m.path, err)
		}
	default:
		if err := msyncRange(m.mapped(), 0, m.Size()); err != nil {
			return fmt.Errorf("pmem: %s: msync whole mapping: %w", m.path, err)
		}
	}
	return nil
}

// Zero makes [off, off+n) read as zeroes. On a regular file it gives the whole pages inside the
// range back to the filesystem (punching a hole, which the MAP_SHARED mapping sees at once),
// so a discarded range stops using disk, unless Allocate was called: the pages then stay
// allocated. Like a store, it is durable after Persist(off, n).
func (m *Medium) Zero(off, n int64) error {
	if err := m.checkRange("zero", off, n); err != nil {
		return err
	}
	if m.readOnly {
		return fmt.Errorf("pmem: %s: zero: %w", m.path, ErrReadOnly)
	}
	if n == 0 {
		return nil
	}
	if m.keepAllocated.Load() {
		return m.zeroAllocated(off, n)
	}
	end := off + n
	page := int64(os.Getpagesize())
	lo := (off + page - 1) &^ (page - 1)
	hi := end &^ (page - 1)
	if m.punchHoles.Load() && lo < hi {
		err := punchHole(m.claim.fd, lo, hi-lo)
		switch {
		case err == nil:
			data := m.mapped()
			clear(data[off:lo])
			clear(data[hi:end])
			return nil
		case errors.Is(err, errPunchNotSupported):
			m.punchHoles.Store(false)
		default:
			return fmt.Errorf("pmem: %s: zero [%d, +%d): %w", m.path, off, n, err)
		}
	}
	clear(m.mapped()[off:end])
	return nil
}

// Close unmaps the medium and releases its claim. It is safe to call more than once; later
// calls return nil. Slices handed out earlier must not be touched after Close: their memory
// is gone, and touching it faults.
func (m *Medium) Close() error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed.Load() {
		return nil
	}
	m.closed.Store(true)
	var errs []error
	for _, data := range append(m.extended, m.mapped()) {
		if err := unmapMedium(data); err != nil {
			errs = append(errs, fmt.Errorf("munmap: %w", err))
		}
	}
	// The process log stays for the next Open: Close is what a process that did not drop it
	// (a device that failed to close cleanly) leaves behind.
	if err := m.processLog.unmap(); err != nil {
		errs = append(errs, fmt.Errorf("process log: %w", err))
	}
	if err := releaseClaim(m.claim); err != nil {
		errs = append(errs, fmt.Errorf("release claim: %w", err))
	}
	if len(errs) > 0 {
		// One prefix for both failures, not one per line of the joined error.
		return fmt.Errorf("pmem: %s: %w", m.path, errors.Join(errs...))
	}
	return nil
}

func punchHole(fd int, off, n int64) error {
	err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("fallocate(PUNCH_HOLE): %w (%w)", errPunchNotSupported, err)
	}
	return fmt.Errorf("fallocate(PUNCH_HOLE) [%d, +%d): %w", off, n, err)
}
