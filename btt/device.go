package btt

import (
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/nvblk/nvblk/pmem"
)

// Medium is the byte-addressable store under the BTT. *pmem.Medium
// implements it; tests use an in-memory one.
type Medium interface {
	// Size is the namespace size in bytes.
	Size() int64
	// Slice returns a window of exactly n bytes at off into the medium's
	// mapping. Stores into it reach the medium; Persist makes them durable.
	Slice(off, n int64) ([]byte, error)
	// Persist makes the stores to [off, off+n) durable before it returns (in
	// the medium's durability mode) and orders them before later stores.
	Persist(off, n int64) error
	// Flush makes every store so far durable.
	Flush() error
	// Zero sets [off, off+n) to zeroes (punching holes where it can).
	Zero(off, n int64) error
}

// Options control Open.
type Options struct {
	// ReadOnly opens the BTT without writing anything: not even flog
	// recovery, whose pending moves then stay visible as the old data.
	// It also skips the check for blocks with two owners, which only a
	// device that writes must pass (see Open).
	ReadOnly bool
}

// Device is an open BTT: a block device of NumSectors sectors of SectorSize
// bytes, safe for concurrent use.
type Device struct {
	m       Medium
	version Version
	// set holds the arenas and the capacity: read by every I/O (one
	// atomic load), replaced whole by Grow.
	set      atomic.Pointer[arenaSet]
	lbaSize  uint32 // external LBA size (data + metadata bytes)
	sector   uint32 // data bytes per LBA: 512 or 4096
	readOnly bool
	// errorFlag: an arena carries InfoFlagError; writes are refused.
	errorFlag bool
	// fromInfo2 lists arenas whose primary info block was damaged and that
	// were opened from their backup.
	fromInfo2 []int
	recovered int // flog moves completed by Open
	replayed  int // pending-log writes Open committed (deferred.go)

	// def is the deferred write path's state when the medium defers
	// persists (DeferredMedium) and the device is writable, else nil.
	def *deferredState

	lanes  chan *lane
	closed atomic.Bool

	// growMu serialises Grow.
	growMu sync.Mutex

	// laneMu serialises TryAcquireLane's check-and-take; held counts the
	// lanes Lane values hold (AcquireLane, TryAcquireLane), which never
	// come back between two I/Os.
	laneMu sync.Mutex
	held   int
}

// lane is the right to use one free block and flog group in every arena,
// and one read tracking slot.
type lane struct {
	id int
	// committing is the arena whose write this lane is committing, from
	// its first flog store to its map store, else nil: a fault in between
	// fails that arena (see writeSector). Owned by the lane's holder.
	committing *arena
	// taken are the clean blocks a write on a deferred medium holds.
	taken takenBlocks
	// batchAt is the sector of the write's current batch that a fault
	// would have hit. Owned by the lane's holder.
	batchAt int
}

// Open finds the BTT on m (version 1.1 at 4 KiB, else 2.0 at 0), falls back
// to an arena's backup info block when the primary is damaged, replays the
// flog, and returns the device. An arena with the error flag set makes the
// device read-only, as the kernel does.
//
// A writable Open also reads every map entry and refuses, with an error
// wrapping ErrCorrupt that names the block and both its owners, an arena
// in which a block is owned twice once recovery is done; the kernel does
// not check this. It costs one pass over the map and a bitmap of
// internal_nlba bits per arena, freed before Open returns. A read-only
// Open (or one the error flag makes read-only) skips it: such a device
// never writes, so it serves what the medium holds, conflicts included.
//
// What Open allocates is bounded by the medium, not by what its info blocks
// claim: every arena spans at least ArenaMinSize bytes, and whatever an
// arena's nfree, Open keeps in-memory state for at most maxLanes of its
// lanes (about 4 KiB) and one table of map locks for the device.
func Open(m Medium, opts Options) (dev *Device, err error) {
	// Open reads every flog group and writes recovered map entries: a
	// medium truncated under it, or a hole the filesystem cannot fill,
	// fails the Open instead of the process.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			dev, err = nil, fmt.Errorf("btt: open: %w", faultError(faultAddr(r)))
		}
	}()
	layout, err := discover(m)
	if err != nil {
		return nil, fmt.Errorf("btt: %w", err)
	}
	d := &Device{
		m:        m,
		version:  layout.version,
		lbaSize:  layout.arenas[0].ExternalLBASize,
		sector:   dataSectorSize(layout.arenas[0].ExternalLBASize),
		readOnly: opts.ReadOnly,
	}
	var arenas []*arena
	var nlba uint64
	nlanes := maxLanes
	// On a deferred medium every free block of an arena is a block a write
	// may take between two commits, not only the lanes': keep them all
	// (nfree is at most MaxNFree, and an arena of nfree blocks spans at
	// least ArenaMinSize).
	dm, deferred := m.(DeferredMedium)
	deferred = deferred && dm.PersistDeferred() && !opts.ReadOnly
	flogLanes := 0
	pending := 0
	for i, da := range layout.arenas {
		a, err := newArena(m, i, da, nlba, deferred)
		if err != nil {
			return nil, fmt.Errorf("btt: arena %d: %w", i, err)
		}
		if da.fromInfo2 {
			d.fromInfo2 = append(d.fromInfo2, i)
		}
		if a.info.Flags&InfoFlagError != 0 {
			d.errorFlag = true
		}
		// Pending moves are counted here and found again below, not
		// kept: an arena may have up to 65536 lanes, all of them
		// pending.
		err = a.scanFlog(a.keepFree, func(pendingMove) { pending++ })
		if err != nil {
			return nil, fmt.Errorf("btt: arena %d: %w", i, err)
		}
		nlanes = min(nlanes, len(a.rtt))
		if i == 0 || len(a.free) < flogLanes {
			flogLanes = len(a.free)
		}
		arenas = append(arenas, a)
		nlba += uint64(a.externalNLBA)
	}
	d.set.Store(&arenaSet{arenas: arenas, nlba: nlba})
	// One table of map locks for all arenas: lock contention between
	// arenas is rare (an arena holds 512 GiB), and a crafted chain of
	// many arenas then costs no lock table each.
	locks := make([]paddedMutex, nlanes)
	for _, a := range d.arenaList() {
		a.mapLocks = locks
	}
	// A device that will take writes must not have a block with two
	// owners (two lanes' free blocks, a free block and an LBA's, two
	// LBAs'): its writes would overwrite live sectors in place. The check
	// models the arenas as recovery will leave them (see blockClaims), and
	// runs before recovery so that a refused Open writes nothing. A
	// read-only device writes nothing, recovery included, so conflicts
	// cannot spread through it: it opens without the check (and without
	// reading the whole map), for nvblk check, info and read to inspect.
	if !opts.ReadOnly && !d.errorFlag {
		for i, a := range d.arenaList() {
			if err := a.checkOwnership(); err != nil {
				return nil, fmt.Errorf("btt: arena %d: %w", i, err)
			}
		}
	}
	// Recovery writes only once every arena checked out: an Open that
	// fails leaves the medium as it found it. An error flag in any arena
	// makes the whole device read-only, recovery included.
	if pending > 0 && !opts.ReadOnly && !d.errorFlag {
		for i, a := range d.arenaList() {
			var werr error
			err := a.scanFlog(nil, func(p pendingMove) {
				if werr == nil {
					if werr = a.writeMap(m, p.premap, p.newMap|mapNormal); werr == nil {
						d.recovered++
					} else {
						werr = fmt.Errorf("recovering lane %d: %w", p.lane, werr)
					}
				}
			})
			if err = cmpOr(werr, err); err != nil {
				return nil, fmt.Errorf("btt: arena %d: %w", i, err)
			}
		}
	}
	if d.errorFlag {
		d.readOnly = true
	}
	if deferred && !d.readOnly {
		if err := d.startDeferred(dm, flogLanes); err != nil {
			return nil, fmt.Errorf("btt: %w", err)
		}
	}
	d.lanes = make(chan *lane, nlanes)
	for i := 0; i < nlanes; i++ {
		d.lanes <- &lane{id: i}
	}
	return d, nil
}

// cmpOr returns the first non-nil error.
func cmpOr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// maxLanes bounds the lanes a device uses, and so the in-memory state Open
// keeps per arena: ND_MAX_LANES, the most the kernel's driver ever uses
// (it takes one lane per CPU, up to 256). The flog groups of lanes past it
// are still read and recovered, never written.
const maxLanes = DefaultNFree

func newArena(m Medium, index int, da discoveredArena, externalStart uint64, everyFreeBlock bool) (*arena, error) {
	a := &arena{index: index, arenaGeometry: da.arenaGeometry, info: da.Info, externalStart: externalStart}
	var err error
	if a.mapArea, err = m.Slice(a.mapOff, int64(a.externalNLBA)*MapEntrySize); err != nil {
		return nil, fmt.Errorf("map: %w", err)
	}
	if a.flogArea, err = m.Slice(a.logOff, int64(a.nfree)*FlogGroupSize); err != nil {
		return nil, fmt.Errorf("flog: %w", err)
	}
	if a.dataArea, err = m.Slice(a.dataOff, int64(a.internalNLBA)*int64(a.internalLBASize)); err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if !aligned(a.mapArea, 4) || !aligned(a.flogArea, 8) {
		return nil, fmt.Errorf("%w: map or flog not word-aligned in the mapping", ErrCorrupt)
	}
	if a.logIndex, err = detectLogIndex(a); err != nil {
		return nil, err
	}
	lanes := min(int(a.nfree), maxLanes)
	a.free = make([]freeEntry, lanes)
	if everyFreeBlock {
		a.free = make([]freeEntry, a.nfree)
	}
	a.rtt = make([]atomic.Uint64, lanes)
	a.readerLanes = make([]atomic.Uint64, (lanes+63)/64)
	return a, nil
}

// writeMap stores and persists one map entry.
func (a *arena) writeMap(m Medium, premap, raw uint32) error {
	storeWord32(a.mapArea, int(premap)*MapEntrySize, raw)
	return m.Persist(a.mapOff+int64(premap)*MapEntrySize, MapEntrySize)
}

// SectorSize is the number of data bytes per LBA: 512 or 4096.
func (d *Device) SectorSize() uint32 { return d.sector }

// LBASize is the external LBA size on media, data plus metadata bytes
// (e.g. 520 for 512-byte sectors with 8 bytes of protection information).
func (d *Device) LBASize() uint32 { return d.lbaSize }

// NumSectors is the capacity in sectors of SectorSize.
func (d *Device) NumSectors() uint64 { return d.set.Load().nlba }

// arenaSet is a device's arenas and its capacity, replaced together.
type arenaSet struct {
	arenas []*arena
	nlba   uint64
}

// arenaList is the device's arenas now.
func (d *Device) arenaList() []*arena { return d.set.Load().arenas }

// ReadOnly reports whether writes are refused.
func (d *Device) ReadOnly() bool { return d.readOnly }

// ErrorFlag reports whether an arena carries the error flag, which makes
// the device read-only.
func (d *Device) ErrorFlag() bool { return d.errorFlag }

// UUID is the BTT's uuid (the same in every arena's info block).
func (d *Device) UUID() [16]byte { return d.arenaList()[0].info.UUID }

// Version is the layout version found on media.
func (d *Device) Version() Version { return d.version }

// Arenas describes the arenas, for info and check.
func (d *Device) Arenas() []ArenaInfo {
	out := make([]ArenaInfo, len(d.arenaList()))
	for i, a := range d.arenaList() {
		out[i] = a.describe()
	}
	return out
}

// Recovered is how many half-done writes Open completed from the flog.
func (d *Device) Recovered() int { return d.recovered }

// OpenedFromBackup lists the arenas whose primary info block was damaged.
func (d *Device) OpenedFromBackup() []int { return append([]int(nil), d.fromInfo2...) }

// Flush makes every completed write durable.
func (d *Device) Flush() error {
	if d.closed.Load() {
		return fmt.Errorf("btt: flush: %w", ErrClosed)
	}
	if d.def != nil {
		if err := d.commit(); err != nil {
			return fmt.Errorf("btt: flush: %w", err)
		}
		return nil
	}
	if err := d.m.Flush(); err != nil {
		return fmt.Errorf("btt: flush: %w", err)
	}
	return nil
}

// Close waits for in-flight I/O, flushes, and refuses I/O from then on. It
// does not close the medium.
func (d *Device) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	for i := 0; i < cap(d.lanes); i++ {
		<-d.lanes
	}
	if d.readOnly {
		return nil
	}
	if d.def != nil {
		if err := d.commit(); err != nil {
			return fmt.Errorf("btt: close: %w", err)
		}
		// Committed: the log holds nothing a reopen would need.
		if d.def.persistent {
			if err := d.def.m.DropProcessLog(); err != nil {
				return fmt.Errorf("btt: close: pending log: %w", err)
			}
		}
		return nil
	}
	if err := d.m.Flush(); err != nil {
		return fmt.Errorf("btt: close: flush: %w", err)
	}
	return nil
}

// acquire, checkRange and sectorsIn check a caller's request; their errors
// go back to the caller as they are, so they carry the package prefix.
func (d *Device) acquire() (*lane, error) {
	if d.closed.Load() {
		return nil, fmt.Errorf("btt: %w", ErrClosed)
	}
	l := <-d.lanes
	// Close may have drained the pool after our check; it only waits for
	// lanes, so give this one back and refuse.
	if d.closed.Load() {
		d.lanes <- l
		return nil, fmt.Errorf("btt: %w", ErrClosed)
	}
	return l, nil
}

func (d *Device) release(l *lane) { d.lanes <- l }

// locate maps an external LBA to its arena and premap LBA.
func (d *Device) locate(lba uint64) (*arena, uint32) {
	for _, a := range d.arenaList() {
		if lba < a.externalStart+uint64(a.externalNLBA) {
			return a, uint32(lba - a.externalStart)
		}
	}
	return nil, 0 // unreachable after checkRange
}

func (d *Device) checkRange(lba, n uint64) error {
	nlba := d.NumSectors()
	if n > nlba || lba > nlba-n {
		return fmt.Errorf("btt: %w: LBA %d + %d sectors, capacity %d", ErrOutOfRange, lba, n, nlba)
	}
	return nil
}

func (d *Device) sectorsIn(iov [][]byte) (uint64, error) {
	var total uint64
	for _, b := range iov {
		total += uint64(len(b))
	}
	if total%uint64(d.sector) != 0 {
		return 0, fmt.Errorf("btt: %w: %d bytes, sector size %d", ErrMisaligned, total, d.sector)
	}
	return total / uint64(d.sector), nil
}

// begin validates an I/O of the io-vector at lba and takes a lane for it:
// the caller releases the lane.
func (d *Device) begin(lba uint64, iov [][]byte) (sectors uint64, l *lane, err error) {
	if sectors, err = d.sectorsIn(iov); err != nil {
		return 0, nil, err
	}
	if err = d.checkRange(lba, sectors); err != nil {
		return 0, nil, err
	}
	if l, err = d.acquire(); err != nil {
		return 0, nil, err
	}
	return sectors, l, nil
}

// ReadV reads len(iov) bytes (a whole number of sectors) starting at lba into
// the io-vector. Each sector is read atomically: it returns one complete
// version of the sector, never a mix of two writes.
func (d *Device) ReadV(lba uint64, iov [][]byte) error {
	n, l, err := d.begin(lba, iov)
	if err != nil {
		return err
	}
	defer d.release(l)
	return d.readOn(l, lba, n, iov, 0)
}

// readOn reads n sectors at lba into iov, from its byte skip on, through
// lane l, a run of sectors at a time (readRun): sectors whose blocks are
// consecutive cost one read-tracking publish and one copy between them.
func (d *Device) readOn(l *lane, lba, n uint64, iov [][]byte, skip int) (err error) {
	cur := iovCursor{iov: iov}
	cur.skip(skip)
	// The lane's rtt slot is held across the runs of one read, not
	// cleared per run: each run then costs one atomic publish.
	var held *arena
	var i uint64
	// run is the run being copied, for a fault to name its sector.
	var run readRun
	// A fault in the mapping or in iov ends this read, not the process;
	// readFault leaves the lane as a returning read does. Set once per
	// request, not per sector: the pair costs a few nanoseconds.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			addr := faultAddr(r)
			err = d.readFault(addr, l, held, lba+i+run.faultSector(d.locateFault(addr)))
		}
	}()
	for i < n {
		a, premap := d.locate(lba + i)
		if a != held {
			if held != nil {
				held.endRead(l)
			}
			a.markReader(l.id)
			held = a
		}
		// A run stays inside its arena and inside maxRunBytes.
		most := min(n-i, uint64(a.externalNLBA-premap), uint64(maxRunBytes/d.sector))
		var err error
		if run, err = d.findRun(l, a, premap, uint32(most)); err != nil {
			held.endRead(l)
			return fmt.Errorf("btt: read LBA %d: %w", lba+i, err)
		}
		if run.nextValid {
			// While this run is copied, the CPU loads the start of the
			// next one. The map may change before it is read: a stale
			// hint costs only a wasted load, and findRun looks the
			// sector up again under read tracking.
			off := int(run.next) * int(a.internalLBASize)
			pmem.Prefetch(a.dataArea[off : off+min(int(d.sector), prefetchLead)])
		}
		d.copyRun(a, run, &cur)
		i += uint64(run.n)
		run = readRun{}
	}
	if held != nil {
		held.endRead(l)
	}
	return nil
}

// maxRunBytes bounds the data one published range covers: a writer whose
// free block falls in a reader's range waits for that range's copy, so
// the wait stays a few microseconds however large the request.
const maxRunBytes = 256 << 10

// prefetchLead is how much of the next run's first block a multi-sector
// read asks the CPU to load while it copies the current run: enough for
// the copy to start on cached lines and for the hardware prefetcher to
// take over the rest of the block.
const prefetchLead = 512

// readRun is a run of n sectors a read copies at once: from block on, in
// consecutive blocks (n > 1 only then), or n sectors of zeroes (trim).
// next is the block of the sector after the run, when the run ended at a
// sector the read will go on to and that maps to a readable block.
type readRun struct {
	block     uint32
	n         uint32
	trim      bool
	nextValid bool
	next      uint32
}

// faultSector is which sector of the run a fault at s hit: the one whose
// block holds it, or the first when it hit elsewhere (the caller's
// buffer, or no run yet).
func (r readRun) faultSector(s faultSite) uint64 {
	if s.area != areaData || r.trim || r.n == 0 {
		return 0
	}
	if b := uint32(s.off / int(s.a.internalLBASize)); b >= r.block && b-r.block < r.n {
		return uint64(b - r.block)
	}
	return 0
}

// findRun resolves up to most sectors from premap on (most >= 1) into the
// run the read copies next, and publishes its blocks in the lane's rtt
// slot. The caller has marked its lane a reader of a (markReader). The
// slot is left publishing the run: the next run's publish replaces it and
// endRead clears it, so a writer waiting for one of its blocks waits at
// most until then.
//
// It follows the kernel's btt_read_pg, a range at a time: look the
// sectors up, publish their blocks, look them up again; the sectors whose
// entries did not change are safe to copy, because a writer that frees
// one of those blocks after the second look-up finds it published before
// it reuses it. Each sector is still one map entry read twice, and read
// whole as one version: a range publish is one atomic store, and a
// sector whose entry moved between the two look-ups ends the run before
// it.
func (d *Device) findRun(l *lane, a *arena, premap, most uint32) (readRun, error) {
	slot := &a.rtt[l.id]
	// Consecutive blocks are consecutive bytes only when a block is the
	// sector's data and nothing else; with metadata per block (520-byte
	// LBAs) each sector is its own run.
	if a.internalLBASize != d.sector {
		most = 1
	}
	block, trim, mediaErr := a.lookup(premap)
	for {
		if trim {
			// Zeroes need no block, so no publish.
			n := uint32(1)
			for n < most {
				if _, t, _ := a.lookup(premap + n); !t {
					break
				}
				n++
			}
			return readRun{n: n, trim: true}, nil
		}
		if mediaErr {
			return readRun{}, ErrMediaError
		}
		if block >= a.internalNLBA {
			return readRun{}, fmt.Errorf("%w: LBA %d maps to block %d of %d", ErrCorrupt, premap, block, a.internalNLBA)
		}
		run := readRun{block: block, n: 1}
		for run.n < most {
			nb, nt, ne := a.lookup(premap + run.n)
			if nt || ne || nb != block+run.n || nb >= a.internalNLBA {
				run.nextValid, run.next = !nt && !ne && nb < a.internalNLBA, nb
				break
			}
			run.n++
		}
		// Publish the range before re-reading the map: a writer that frees
		// one of its blocks after our re-check will see it published and
		// wait for us (sequentially consistent atomics: the store is
		// ordered before the loads below).
		slot.Store(rttRange(block, run.n))
		k := uint32(0)
		for ; k < run.n; k++ {
			if nb, nt, ne := a.lookup(premap + k); nb != block+k || nt || ne {
				break
			}
		}
		if k > 0 {
			if k < run.n {
				// A writer moved sector k meanwhile: the run ends before
				// it (the published range still covers it, which only
				// makes a writer of that block wait for nothing), and the
				// next run looks it up afresh.
				run.n, run.nextValid = k, false
			}
			return run, nil
		}
		block, trim, mediaErr = a.lookup(premap)
	}
}

// copyRun copies a run found by findRun into dst.
func (d *Device) copyRun(a *arena, run readRun, dst *iovCursor) {
	if run.trim {
		dst.zero(int(run.n) * int(d.sector))
		return
	}
	off := int(run.block) * int(a.internalLBASize)
	if a.internalLBASize == d.sector {
		dst.copyFrom(a.dataArea[off : off+int(run.n)*int(d.sector)])
		return
	}
	for k := 0; k < int(run.n); k++ {
		dst.copyFrom(a.dataArea[off : off+int(d.sector)])
		off += int(a.internalLBASize)
	}
}

// endRead clears the lane's rtt slot.
func (a *arena) endRead(l *lane) {
	a.rtt[l.id].Store(0)
}

// WriteV writes the io-vector (a whole number of sectors) starting at lba.
// Each sector is written atomically: after a crash it holds either its old
// or its new content.
func (d *Device) WriteV(lba uint64, iov [][]byte) error {
	if d.readOnly {
		return fmt.Errorf("btt: %w", ErrReadOnly)
	}
	n, l, err := d.begin(lba, iov)
	if err != nil {
		return err
	}
	defer d.release(l)
	return d.writeOn(l, lba, n, iov)
}

// writeOn writes n sectors at lba from iov through lane l.
func (d *Device) writeOn(l *lane, lba, n uint64, iov [][]byte) (err error) {
	cur := iovCursor{iov: iov}
	var i uint64
	l.batchAt = 0
	// As in readOn: a fault ends the write (writeFault), not the process.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = d.writeFault(faultAddr(r), l, lba+i+uint64(l.batchAt))
		}
	}()
	if d.def != nil {
		for i < n {
			a, premap := d.locate(lba + i)
			most := int(min(n-i, uint64(a.externalNLBA-premap), writeBatchMax))
			// The gate is held per batch, not per request: a commit
			// another writer needs waits for one batch of this one, not
			// for the rest of a large request.
			k, err := d.writeBatchGated(l, a, premap, most, &cur)
			if err != nil {
				return fmt.Errorf("btt: write LBA %d: %w", lba+i+uint64(k), err)
			}
			i += uint64(k)
		}
		return nil
	}
	for ; i < n; i++ {
		a, premap := d.locate(lba + i)
		if err := d.writeSector(l, a, premap, &cur); err != nil {
			return fmt.Errorf("btt: write LBA %d: %w", lba+i, err)
		}
	}
	return nil
}

// writeSector writes one sector through lane l. A fault in the copy (the
// free block's page, or the caller's buffer) unwinds before the map lock is
// taken and before anything but the free block changed: the write is
// abandoned and the lane's free block is still free.
func (d *Device) writeSector(l *lane, a *arena, premap uint32, src *iovCursor) error {
	if f := a.failed.Load(); f != nil {
		return *f
	}
	fe := &a.free[l.id]
	newBlock := fe.block
	if newBlock >= a.internalNLBA {
		return fmt.Errorf("%w: lane %d free block %d of %d", ErrCorrupt, l.id, newBlock, a.internalNLBA)
	}
	// A reader that published this block before its previous owner moved
	// on may still be copying it.
	a.waitForReaders(newBlock)
	off := int(newBlock) * int(a.internalLBASize)
	src.copyTo(a.dataArea[off : off+int(d.sector)])
	if err := d.m.Persist(a.dataOff+int64(off), int64(d.sector)); err != nil {
		return err
	}

	mu := a.mapLock(premap)
	mu.Lock()
	defer mu.Unlock()
	mapOff := int(premap) * MapEntrySize
	raw := loadWord32(a.mapArea, mapOff)
	oldBlock, _, oldErr := decodeMapEntry(premap, raw)
	if oldBlock >= a.internalNLBA {
		return fmt.Errorf("%w: LBA %d maps to block %d of %d", ErrCorrupt, premap, oldBlock, a.internalNLBA)
	}
	// Store the entry back unchanged before committing anything: a map
	// page the filesystem cannot supply (a hole of a sparse image on a
	// full filesystem) faults here, where the write is still only data in
	// a free block, not at the map store below, after the flog entry made
	// it part of the arena's history. Under the map lock nothing else
	// stores to the entry; readers see the same value.
	storeWord32(a.mapArea, mapOff, raw)
	oldMap := oldBlock
	if oldErr {
		oldMap |= mapErrorFlag
	}
	e := FlogEntry{LBA: premap, OldMap: oldMap, NewMap: newBlock, Seq: fe.seq}
	// From the first flog store to the map store the medium and the free
	// list disagree: the flog may already name oldBlock as the lane's free
	// block while the map still gives it to premap. A failure in between
	// (a fault, or a persist that failed) fails the arena rather than let
	// a later write through this lane overwrite a live block; reopening
	// recovers the move from the flog.
	l.committing = a
	if err := a.writeFlog(d.m, l.id, int(fe.sub), e); err != nil {
		l.committing = nil
		return a.fail(err)
	}
	fe.sub = 1 - fe.sub
	fe.seq = nextSeq(fe.seq)
	fe.block = oldBlock
	storeWord32(a.mapArea, mapOff, newBlock|mapNormal)
	l.committing = nil
	// The map store has landed: free list and medium agree again, so a
	// failed persist of it fails only this write.
	return d.m.Persist(a.mapOff+int64(mapOff), MapEntrySize)
}

// writeFlog stores the entry in the lane's sub-slot as two 8-byte halves,
// each persisted before the next: the sequence number lands last, so a torn
// entry still carries the old sequence and is not trusted.
func (a *arena) writeFlog(m Medium, lane, sub int, e FlogEntry) error {
	off := lane*FlogGroupSize + a.logIndex[sub]*FlogEntrySize
	lo, hi := e.halves()
	storeWord64(a.flogArea, off, lo)
	if err := m.Persist(a.logOff+int64(off), 8); err != nil {
		return err
	}
	storeWord64(a.flogArea, off+8, hi)
	return m.Persist(a.logOff+int64(off)+8, 8)
}

// WriteZeroes makes n sectors from lba read as zeroes by setting the Z flag
// in their map entries: one atomic map store per sector, no data written and
// no block moved (the block stays the sector's own). It serves both
// write-zeroes and discard. It takes a lane for its length, as ReadV and
// WriteV do, so Close waits for it.
//
// The entries of a run within one arena are stored first and persisted
// together (one msync per arena in the sync mode, not one per sector):
// each entry is an independent atomic store, so a crash part way leaves
// some of the sectors zeroed and the rest as they were, which a discard
// or write-zeroes that had not completed may.
func (d *Device) WriteZeroes(lba, n uint64) error {
	if d.readOnly {
		return fmt.Errorf("btt: %w", ErrReadOnly)
	}
	if err := d.checkRange(lba, n); err != nil {
		return err
	}
	l, err := d.acquire()
	if err != nil {
		return err
	}
	defer d.release(l)
	return d.zeroOn(lba, n)
}

// zeroOn is WriteZeroes on a lane the caller holds.
func (d *Device) zeroOn(lba, n uint64) (err error) {
	var i uint64
	// A fault in the map ends the request; no lane state depends on a
	// trim, so the arena stays writable.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("btt: write zeroes LBA %d: %w", lba+i, d.locateFault(faultAddr(r)).err())
		}
	}()
	if d.def != nil {
		// Trims of LBAs written since the last commit change their
		// pending entries, which commit must not empty meanwhile.
		d.def.gate.RLock()
		defer d.def.gate.RUnlock()
	}
	for i < n {
		a, premap := d.locate(lba + i)
		if f := a.failed.Load(); f != nil {
			return fmt.Errorf("btt: write zeroes LBA %d: %w", lba+i, *f)
		}
		first, end := premap, premap+uint32(min(n-i, uint64(a.externalNLBA-premap)))
		var terr error
		for ; premap < end; premap++ {
			if terr = a.trim(premap); terr != nil {
				break
			}
			i++
		}
		// Persist what was stored, even when an entry failed: those
		// sectors are zeroed.
		perr := d.m.Persist(a.mapOff+int64(first)*MapEntrySize, int64(premap-first)*MapEntrySize)
		if err := cmpOr(terr, perr); err != nil {
			return fmt.Errorf("btt: write zeroes LBA %d: %w", lba+i, err)
		}
	}
	return nil
}

// trim stores the Z flag in premap's map entry; the caller persists it.
func (a *arena) trim(premap uint32) error {
	mu := a.mapLock(premap)
	mu.Lock()
	defer mu.Unlock()
	block, trim, _ := a.lookup(premap)
	if trim {
		return nil
	}
	if block >= a.internalNLBA {
		return fmt.Errorf("%w: LBA %d maps to block %d of %d", ErrCorrupt, premap, block, a.internalNLBA)
	}
	// A media-error entry loses its E flag: the sector now reads as zeroes,
	// which is what write-zeroes asks for.
	if a.pending != nil {
		// As a write does: a map page that cannot be supplied faults
		// now, not in the commit that stores this entry.
		mapOff := int(premap) * MapEntrySize
		storeWord32(a.mapArea, mapOff, loadWord32(a.mapArea, mapOff))
		if a.pendingUpdate(premap, block|mapTrimFlag) {
			return nil
		}
	}
	// Not written since the last commit (or not deferred): the trim goes
	// to the map at once. On a deferred medium that is safe in any order:
	// the block stays the LBA's, and a power loss keeps the trim or not.
	storeWord32(a.mapArea, int(premap)*MapEntrySize, block|mapTrimFlag)
	return nil
}

// iovCursor walks an io-vector so a sector can straddle segments without an
// intermediate buffer.
type iovCursor struct {
	iov [][]byte
	seg int
	off int
}

// copyTo copies len(dst) bytes from the cursor into the medium, ordered
// before the stores that follow (the ones that publish them).
func (c *iovCursor) copyTo(dst []byte) {
	c.copyToUnordered(dst)
	pmem.OrderStreaming()
}

// copyToUnordered is copyTo whose stores only pmem.OrderStreaming orders
// before later ones.
func (c *iovCursor) copyToUnordered(dst []byte) {
	for len(dst) > 0 {
		n := pmem.CopyStreamingUnordered(dst, c.iov[c.seg][c.off:])
		dst = dst[n:]
		c.advance(n)
	}
}

func (c *iovCursor) copyFrom(src []byte) {
	for len(src) > 0 {
		n := pmem.Copy(c.iov[c.seg][c.off:], src)
		src = src[n:]
		c.advance(n)
	}
}

func (c *iovCursor) zero(n int) {
	for n > 0 {
		b := c.iov[c.seg][c.off:]
		k := min(n, len(b))
		clear(b[:k])
		n -= k
		c.advance(k)
	}
}

// skip moves the cursor n bytes on, across segments.
func (c *iovCursor) skip(n int) {
	for n > 0 && c.seg < len(c.iov) {
		k := min(n, len(c.iov[c.seg])-c.off)
		c.advance(k)
		n -= k
	}
}

func (c *iovCursor) advance(n int) {
	c.off += n
	for c.seg < len(c.iov) && c.off == len(c.iov[c.seg]) {
		c.seg++
		c.off = 0
	}
}
