package btt

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/nvblk/nvblk/pmem"
)

// DeferredMedium is a Medium whose Persist does not reach the disk: only
// Flush does, and between two Flushes the disk may keep any subset of the
// pages stored to, each as it stood at some moment since the last Flush
// (the page cache, written back by the kernel when and in the order it
// likes). pmem's flush durability mode is one (pmem.Medium.PersistDeferred).
//
// The kernel's write order (data, flog, map, each persisted before the
// next) is no order at all on such a medium: a map page can reach the disk
// before the flog page or the data block it depends on, which leaves a
// lane's free block also mapped, or an LBA mapped to a block that never got
// its data. A writable device on a DeferredMedium therefore writes
// differently (see commit): between two commits a write goes to a block
// that nothing on the disk names, its new mapping is kept in the pending
// log instead of the map, and commit makes data, then flog entries, then
// map entries durable, with a Flush between each step.
type DeferredMedium interface {
	Medium
	// PersistDeferred reports whether Persist leaves stores for Flush.
	PersistDeferred() bool
}

// ProcessLogMedium is a DeferredMedium that can keep a small region of
// memory across a crash of the process but not across one of the machine:
// pmem keeps it in a file on tmpfs, named after the image and stamped with
// the boot it was made in. The device keeps its pending log there, so a
// device reopened after its process was killed finishes the writes that
// process completed, which the image's page cache still holds.
type ProcessLogMedium interface {
	DeferredMedium
	// ProcessLog returns the region, n bytes, 8-byte aligned: as the last
	// process left it if one with this medium did in this boot, else
	// zeroes.
	ProcessLog(n int) ([]byte, error)
	// DropProcessLog gives the region up after a clean close, when it holds
	// nothing to replay.
	DropProcessLog() error
}

// ErrPendingLog wraps the refusal of a pending log that does not fit the
// image: its writes name blocks or lanes the image no longer agrees with.
var ErrPendingLog = errors.New("pending log does not match the image")

// deferredState is a device's write state on a DeferredMedium.
type deferredState struct {
	// gate is held shared by every write, write-zeroes and media-error mark
	// while it looks at or changes a pending table, and exclusively by
	// commit, which empties the tables. Lock order: lane -> gate -> map
	// lock -> pendingSet.mu.
	gate sync.RWMutex
	// gen counts commits; written with gate held exclusively. A writer that
	// ran out of clean blocks at generation g commits only if no one has
	// since.
	gen uint64
	// broken is the error of a commit that failed after its first flog
	// store: the arenas are failed, and commits are refused. Guarded by
	// gate.
	broken error
	// persistent is true when the log is a ProcessLogMedium's region, and
	// m is that medium.
	persistent bool
	m          ProcessLogMedium
	// lanes is how many lanes the device has: each has a clean block after
	// a commit.
	lanes int
	// commits counts commits that wrote flog entries, for Commits.
	commits atomic.Uint64
}

// pendingSet is an arena's pending table and its clean blocks.
type pendingSet struct {
	// slots is this arena's part of the pending log; see pendinglog.go.
	// First words are loaded by readers without a lock and stored under mu;
	// second words are read and written under mu (or with the gate held
	// exclusively).
	slots []byte
	mask  uint32
	// n is the number of slots in use. Stored under mu, loaded by readers:
	// zero lets them skip the table (the map is then the whole truth).
	n atomic.Int32

	// mu guards clean and slot updates; it is taken under a map lock.
	mu sync.Mutex
	// clean are the blocks a write may use now: lanes' free blocks that no
	// pending entry took, and blocks that pending entries took and a later
	// write to the same LBA replaced. None is named by the map or the flog
	// on the disk, so writing one harms nothing a power loss could bring
	// back. Capacity is the lane count and never exceeded: each lane's
	// block is clean, taken by a pending entry, or held by a write in
	// progress.
	clean []cleanBlock
}

// cleanBlock is a block a write may use, and the lane whose flog entry
// names it as free on the disk.
type cleanBlock struct {
	block uint32
	lane  uint16
}

func (p *pendingSet) home(premap uint32) uint32 { return (premap * 0x9e3779b1) & p.mask }

// find probes for premap's slot: it returns the slot's offset and first
// word, which is 0 when premap has no entry and the slot is the empty one
// an entry would go to, or off -1 when the probe met neither (a full
// table, which the lane bound on entries rules out).
func (p *pendingSet) find(premap uint32) (off int, w uint64) {
	key := uint64(premap+1) << 32
	for i, probes := p.home(premap), uint32(0); probes <= p.mask; i, probes = (i+1)&p.mask, probes+1 {
		off = int(i) * pendingSlotSize
		if w = loadWord64(p.slots, off); w == 0 || w&^0xffffffff == key {
			return off, w
		}
	}
	return -1, 0
}

// get returns premap's pending map entry, if it has one. Lock-free: a slot
// is one atomic word, and slots are emptied only after the map holds what
// they held (commit), so a probe that misses an entry finds the same value
// in the map.
func (p *pendingSet) get(premap uint32) (uint32, bool) {
	if _, w := p.find(premap); w != 0 {
		return uint32(w), true
	}
	return 0, false
}

// putLocked makes newRaw premap's pending entry, taken from lane's block.
// It returns the entry it replaced, whose block is clean again, if premap
// had one; oldRaw is kept from the first entry, so commit knows what the
// disk's map holds. The caller holds p.mu and premap's map lock.
func (p *pendingSet) putLocked(premap, newRaw, oldRaw uint32, lane uint16) (prev cleanBlock, had bool) {
	off, w := p.find(premap)
	if off < 0 {
		// Each entry holds a different lane's block, and the table has
		// twice as many slots as there are lanes.
		panic("btt: pending table full")
	}
	if w == 0 {
		storeWord64(p.slots, off+8, pendingWord1(oldRaw, int(lane)))
		storeWord64(p.slots, off, pendingWord0(premap, newRaw))
		p.n.Add(1)
		return cleanBlock{}, false
	}
	first, prevLane := decodePendingWord1(loadWord64(p.slots, off+8))
	storeWord64(p.slots, off+8, pendingWord1(first, int(lane)))
	storeWord64(p.slots, off, pendingWord0(premap, newRaw))
	return cleanBlock{block: uint32(w) & mapBlockMask, lane: uint16(prevLane)}, true
}

// updateLocked replaces premap's pending entry with raw if it has one,
// keeping its lane: a write-zeroes or media-error mark of an LBA written
// since the last commit. The caller holds p.mu and premap's map lock.
func (p *pendingSet) updateLocked(premap, raw uint32) bool {
	off, w := p.find(premap)
	if w == 0 {
		return false
	}
	storeWord64(p.slots, off, pendingWord0(premap, raw))
	return true
}

// pendingUpdate gives premap's pending entry the new raw value, if the
// arena is deferred and premap was written since the last commit. The
// caller holds premap's map lock and the device's gate shared.
func (a *arena) pendingUpdate(premap, raw uint32) bool {
	p := a.pending
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.updateLocked(premap, raw)
}

// each calls f for every slot in use, in slot order.
func (p *pendingSet) each(f func(premap, newRaw, oldRaw uint32, lane int) error) error {
	for i := 0; i <= int(p.mask); i++ {
		off := i * pendingSlotSize
		w0 := loadWord64(p.slots, off)
		if w0 == 0 {
			continue
		}
		premap, newRaw := decodePendingWord0(w0)
		oldRaw, lane := decodePendingWord1(loadWord64(p.slots, off+8))
		if err := f(premap, newRaw, oldRaw, lane); err != nil {
			return err
		}
	}
	return nil
}

// resetLocked empties the table and makes every lane's free block clean
// again. Readers may be probing: n drops first, then each slot, and the
// map already holds what every slot held.
func (p *pendingSet) resetLocked(a *arena, lanes int) {
	p.n.Store(0)
	for i := 0; i <= int(p.mask); i++ {
		storeWord64(p.slots, i*pendingSlotSize, 0)
		storeWord64(p.slots, i*pendingSlotSize+8, 0)
	}
	p.clean = p.clean[:0]
	for l := 0; l < lanes; l++ {
		p.clean = append(p.clean, cleanBlock{block: a.free[l].block, lane: uint16(l)})
	}
}

// startDeferred sets up the deferred write path on a writable device whose
// medium defers persists, replaying the pending log a killed process left.
func (d *Device) startDeferred(dm DeferredMedium, lanes int) error {
	slots := pendingSlots(lanes)
	size := pendingLogSize(len(d.arenaList()), slots)
	df := &deferredState{lanes: lanes}
	if pm, ok := dm.(ProcessLogMedium); ok {
		df.persistent, df.m = true, pm
	}
	log, err := df.region(size)
	if err != nil {
		return err
	}
	uuid := d.UUID()
	state := classifyPendingLog(log, len(d.arenaList()), slots, uuid)
	if state == pendingLogForeign && !hasPendingEntries(log) {
		// A device killed while it grew, after the image got its new
		// arenas and before the log was laid out for them (or the other
		// way round): Grow commits first, so there is nothing in it.
		state = pendingLogBlank
	}
	switch state {
	case pendingLogForeign:
		return fmt.Errorf("%w: it was written by a device of another shape (its header %x)", ErrPendingLog, log[:pendingLogHeaderSize])
	case pendingLogBlank:
		clear(log)
		copy(log, pendingLogHeader(len(d.arenaList()), slots, uuid))
	}
	for i, a := range d.arenaList() {
		a.pending = newPendingSet(log, i, slots, lanes)
	}
	replayed, err := d.replayPending(lanes)
	if err != nil {
		return err
	}
	d.def = df
	d.replayed = replayed
	// A killed process may have left dirty pages of any kind (data, flog
	// entries recovery just trusted, the log's writes): commit now, so the
	// disk holds what the page cache shows before any block is reused.
	return d.commit()
}

// hasPendingEntries reports whether any slot past the header is in use.
func hasPendingEntries(log []byte) bool {
	for _, b := range log[pendingLogHeaderSize:] {
		if b != 0 {
			return true
		}
	}
	return false
}

// layPendingLog gives arenas[from:], which Grow added, their part of a
// pending log laid out for all of arenas, and their clean blocks. The
// caller holds the gate exclusively and has committed, so every table is
// empty; the arenas before keep their slots, which a ProcessLogMedium's
// larger region maps over the same pages.
func (d *Device) layPendingLog(arenas []*arena, from int) error {
	df := d.def
	slots := pendingSlots(df.lanes)
	log, err := df.region(pendingLogSize(len(arenas), slots))
	if err != nil {
		return err
	}
	copy(log, pendingLogHeader(len(arenas), slots, d.UUID()))
	for i := from; i < len(arenas); i++ {
		a := arenas[i]
		a.pending = newPendingSet(log, i, slots, df.lanes)
		a.pending.resetLocked(a, df.lanes)
	}
	return nil
}

// region is a pending log of size bytes: the medium's process log when it
// keeps one, else heap memory, with which the writes since the last commit
// are lost with the process, as they are with a power loss.
func (df *deferredState) region(size int) ([]byte, error) {
	var log []byte
	if df.persistent {
		var err error
		if log, err = df.m.ProcessLog(size); err != nil {
			return nil, fmt.Errorf("pending log: %w", err)
		}
	} else {
		log = make([]byte, size) // the heap aligns it to 8 bytes at least
	}
	if len(log) < size || !aligned(log, 8) {
		return nil, fmt.Errorf("pending log: %d bytes, want %d, 8-byte aligned", len(log), size)
	}
	return log, nil
}

// newPendingSet is arena i's table in log, laid out for slots slots per
// arena, with room for the clean blocks of lanes lanes.
func newPendingSet(log []byte, i, slots, lanes int) *pendingSet {
	base := pendingLogHeaderSize + i*slots*pendingSlotSize
	return &pendingSet{
		slots: log[base : base+slots*pendingSlotSize],
		mask:  uint32(slots - 1),
		clean: make([]cleanBlock, 0, lanes),
	}
}

// replayPending checks a pending log left by a killed process against the
// image (as Open's recovery left it), loads it, and fills each arena's
// clean blocks. An entry is either not committed at all (its lane's flog
// still names its block free, the map still holds its old entry) or
// committed up to its flog entry (recovery then rolled the map forward, and
// what is left is the map store, done here); anything else means the image
// changed since the log was written, and Open refuses it before it has
// written anything.
func (d *Device) replayPending(lanes int) (replayed int, err error) {
	type entry struct {
		premap, newRaw, oldRaw uint32
		lane                   int
		flogged, trimmed       bool
	}
	found := make([][]entry, len(d.arenaList()))
	for ai, a := range d.arenaList() {
		taken := make(map[int]bool)
		err := a.pending.each(func(premap, newRaw, oldRaw uint32, lane int) error {
			newBlock := newRaw & mapBlockMask
			if premap >= a.externalNLBA || lane >= lanes || newBlock >= a.internalNLBA || taken[lane] {
				return fmt.Errorf("%w: arena %d: entry for LBA %d, block %d, lane %d out of place", ErrPendingLog, ai, premap, newBlock, lane)
			}
			taken[lane] = true
			cur := a.mapAreaEntry(premap)
			curBlock, _, _ := decodeMapEntry(premap, cur)
			newest, _, err := flogCurrent(a.flogGroup(lane), a.logIndex)
			if err != nil {
				return fmt.Errorf("arena %d lane %d: %w", ai, lane, err)
			}
			e := entry{premap: premap, newRaw: newRaw, oldRaw: oldRaw, lane: lane}
			oldBlock, _, _ := decodeMapEntry(premap, oldRaw)
			switch {
			case isTrim(newRaw):
				// Written, then trimmed: commit stores the trim over the
				// old block and moves nothing; it may have done so.
				if a.free[lane].block != newBlock || cur != oldRaw && cur != oldBlock|mapTrimFlag {
					return fmt.Errorf("%w: arena %d: trimmed LBA %d maps to %#x (the log says %#x) and lane %d's free block is %d (the log wrote block %d)",
						ErrPendingLog, ai, premap, cur, oldRaw, lane, a.free[lane].block, newBlock)
				}
				e.trimmed = true
			case newest.LBA == premap && newest.NewMap&mapBlockMask == newBlock && newest.OldMap != newest.NewMap && curBlock == newBlock:
				// Committed as far as the flog.
				e.flogged = true
			case a.free[lane].block != newBlock || cur != oldRaw:
				return fmt.Errorf("%w: arena %d: LBA %d maps to %#x (the log says %#x) and lane %d's free block is %d (the log wrote block %d)",
					ErrPendingLog, ai, premap, cur, oldRaw, lane, a.free[lane].block, newBlock)
			}
			found[ai] = append(found[ai], e)
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	// Every entry checked out: now change things.
	for ai, a := range d.arenaList() {
		p := a.pending
		p.resetLocked(a, 0)
		taken := make(map[int]bool)
		for _, e := range found[ai] {
			replayed++
			if e.trimmed {
				oldBlock, _, _ := decodeMapEntry(e.premap, e.oldRaw)
				storeWord32(a.mapArea, int(e.premap)*MapEntrySize, oldBlock|mapTrimFlag)
				continue
			}
			if e.flogged {
				// The flog names the old block free already; the map
				// store is what is left (the entry may carry a trim or
				// error flag since).
				storeWord32(a.mapArea, int(e.premap)*MapEntrySize, e.newRaw)
				continue
			}
			taken[e.lane] = true
			p.putLocked(e.premap, e.newRaw, e.oldRaw, uint16(e.lane))
		}
		for l := 0; l < lanes; l++ {
			if !taken[l] {
				p.clean = append(p.clean, cleanBlock{block: a.free[l].block, lane: uint16(l)})
			}
		}
	}
	return replayed, nil
}

// takeClean takes up to len(dst) (at least one) clean blocks of a for a
// write's batch into dst and returns how many, committing when there are
// none. The caller holds d.def.gate shared; takeClean may release and
// retake it. All under one lock: a locked instruction between the batch's
// copies would wait for their non-temporal stores to drain.
func (d *Device) takeClean(a *arena, dst []cleanBlock) (int, error) {
	p := a.pending
	for {
		p.mu.Lock()
		if n := len(p.clean); n > 0 {
			k := min(n, len(dst))
			copy(dst, p.clean[n-k:])
			p.clean = p.clean[:n-k]
			p.mu.Unlock()
			return k, nil
		}
		p.mu.Unlock()
		// Every lane's block holds a write since the last commit: none may
		// be reused until a commit has made those writes durable and their
		// old blocks free on the disk.
		gen := d.def.gen
		d.def.gate.RUnlock()
		err := d.commitAfter(gen)
		d.def.gate.RLock()
		if err != nil {
			return 0, err
		}
	}
}

// giveBack returns a block taken for a write that did not happen.
func (a *arena) giveBack(b cleanBlock) {
	p := a.pending
	p.mu.Lock()
	p.clean = append(p.clean, b)
	p.mu.Unlock()
}

// writeBatchMax bounds the sectors a write on a deferred medium copies
// before it orders them with one store fence and publishes them. The
// fence waits for the copies' non-temporal stores to reach memory: once per
// sector, that wait was 30 % of a 128 KiB write's time in a profile;
// 16 sectors is a 64 KiB request's worth, and a small part of the lanes'
// clean blocks.
const writeBatchMax = 16

// takenBlocks are the clean blocks a write on a deferred medium took and
// has not yet made pending, held[next:n] of them from arena from (nil when
// none): a fault or an error gives them back. Owned by the lane's holder.
type takenBlocks struct {
	held    [writeBatchMax]cleanBlock
	next, n int
	from    *arena
}

// giveBackRest returns the blocks not yet made pending.
func (t *takenBlocks) giveBackRest() {
	for _, b := range t.held[t.next:t.n] {
		t.from.giveBack(b)
	}
	t.next, t.n, t.from = 0, 0, nil
}

// writeBatchDeferred is writeSector on a deferred medium, for up to most
// (1..writeBatchMax) consecutive sectors of a from premap on: each
// sector's data goes to a clean block, and its new mapping to the pending
// table; nothing on the disk names the blocks until commit. It takes the
// batch's clean blocks at once (as many as there are, up to most), copies
// every sector into them and orders them with one store fence, then
// publishes them one by one, and returns how many sectors it wrote: fewer
// than most when the clean blocks ran short, so the next batch commits.
// On an error the sectors before the one that failed are written, as with
// one sector at a time. The caller holds d.def.gate shared, and l.taken is
// empty.
func (d *Device) writeBatchDeferred(l *lane, a *arena, premap uint32, most int, src *iovCursor) (int, error) {
	if f := a.failed.Load(); f != nil {
		return 0, *f
	}
	t := &l.taken
	l.batchAt = 0
	k, err := d.takeClean(a, t.held[:most])
	if err != nil {
		return 0, err
	}
	t.n, t.from = k, a
	for _, b := range t.held[:k] {
		if b.block >= a.internalNLBA {
			t.giveBackRest()
			return 0, fmt.Errorf("%w: lane %d free block %d of %d", ErrCorrupt, b.lane, b.block, a.internalNLBA)
		}
	}
	for j, b := range t.held[:k] {
		// A reader that published this block while an earlier write
		// mapped it may still be copying it.
		a.waitForReaders(b.block)
		// l.batchAt names the sector for a fault in the copy, which gives
		// every held block back (writeFault).
		l.batchAt = j
		off := int(b.block) * int(a.internalLBASize)
		src.copyToUnordered(a.dataArea[off : off+int(d.sector)])
	}
	// Every copied sector's data before any of their mappings.
	pmem.OrderStreaming()
	for t.next < t.n {
		l.batchAt = t.next
		if err := d.publishDeferred(a, premap+uint32(t.next), t.held[t.next]); err != nil {
			written := t.next
			t.giveBackRest()
			return written, err
		}
		t.next++
	}
	t.next, t.n, t.from = 0, 0, nil
	return k, nil
}

// writeBatchGated is writeBatchDeferred with d.def.gate held shared.
func (d *Device) writeBatchGated(l *lane, a *arena, premap uint32, most int, src *iovCursor) (int, error) {
	d.def.gate.RLock()
	defer d.def.gate.RUnlock()
	return d.writeBatchDeferred(l, a, premap, most, src)
}

// publishDeferred makes block b, which holds premap's new data, premap's
// pending entry.
func (d *Device) publishDeferred(a *arena, premap uint32, b cleanBlock) error {
	mu := a.mapLock(premap)
	mu.Lock()
	defer mu.Unlock()
	mapOff := int(premap) * MapEntrySize
	disk := loadWord32(a.mapArea, mapOff)
	if blk, _, _ := decodeMapEntry(premap, disk); blk >= a.internalNLBA {
		return fmt.Errorf("%w: LBA %d maps to block %d of %d", ErrCorrupt, premap, blk, a.internalNLBA)
	}
	// As in writeSector: a map page the filesystem cannot supply faults
	// here, while the write is still only data in a clean block, and not in
	// commit, after flog entries named it.
	storeWord32(a.mapArea, mapOff, disk)
	p := a.pending
	p.mu.Lock()
	prev, had := p.putLocked(premap, b.block|mapNormal, disk, b.lane)
	if had {
		// The block this LBA got earlier since the last commit: nothing on
		// the disk names it, so it is clean again (a reader still copying
		// it is waited for by the next write that takes it).
		p.clean = append(p.clean, prev)
	}
	p.mu.Unlock()
	return nil
}

// Flush on a deferred medium is a commit.
func (d *Device) commit() error {
	df := d.def
	df.gate.Lock()
	defer df.gate.Unlock()
	return d.commitLocked()
}

// commitAfter commits unless another commit ran since generation gen.
func (d *Device) commitAfter(gen uint64) error {
	df := d.def
	df.gate.Lock()
	defer df.gate.Unlock()
	if df.gen != gen {
		return nil
	}
	return d.commitLocked()
}

// commitLocked makes every completed write durable, in three steps with a
// Flush before each of the last two, so that whatever subset of pages a
// power loss keeps, no flog entry is on the disk before its data and no
// map entry before its flog entry:
//
//  1. Flush: the data of every pending write (and the map stores of the
//     commit before) reach the disk. Nothing on the disk names the data
//     blocks yet, so until this returns a power loss keeps the last commit.
//  2. For each pending entry, a flog entry {LBA, old block, new block} in
//     the lane whose free block the write took; then Flush. Each entry is
//     independent of the others (different lanes, different LBAs, a block
//     each), so any subset of them on the disk is a consistent BTT once
//     recovery rolls their map entries forward, and all of them is the
//     new state. The old blocks become the lanes' free blocks.
//  3. Store the pending map entries into the map and empty the table. No
//     Flush: the flog already makes them durable, and the next commit's
//     step 1 writes them back before any later flog entry of those lanes.
//
// The caller holds d.def.gate exclusively.
func (d *Device) commitLocked() (err error) {
	df := d.def
	if df.broken != nil {
		return df.broken
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = d.breakCommit(d.locateFault(faultAddr(r)).err())
		}
	}()
	pending := 0
	for _, a := range d.arenaList() {
		pending += int(a.pending.n.Load())
	}
	if pending == 0 {
		// Trims and the last commit's map stores are all there is.
		if err := d.m.Flush(); err != nil {
			return err
		}
		df.gen++
		return nil
	}
	// An LBA written and then trimmed since the last commit needs no move:
	// its trim goes to the map over its old block, as a trim of an LBA not
	// written since does, and the block the write took stays its lane's
	// free one. Moving it through the flog would make the trim depend on
	// a map store that recovery undoes (rolling the flog's move forward
	// restores the block without the trim).
	for _, a := range d.arenaList() {
		_ = a.pending.each(func(premap, newRaw, oldRaw uint32, _ int) error {
			if isTrim(newRaw) {
				oldBlock, _, _ := decodeMapEntry(premap, oldRaw)
				storeWord32(a.mapArea, int(premap)*MapEntrySize, oldBlock|mapTrimFlag)
			}
			return nil
		})
	}
	if err := d.m.Flush(); err != nil {
		// Nothing changed on the disk or in the tables (a trim stored
		// early is what the table already shows): the caller's flush
		// fails, and the next one tries again.
		return err
	}
	df.gen++
	for _, a := range d.arenaList() {
		if err := a.pending.each(func(premap, newRaw, oldRaw uint32, lane int) error {
			if isTrim(newRaw) {
				return nil
			}
			return a.commitFlog(d.m, lane, premap, oldRaw, newRaw)
		}); err != nil {
			return d.breakCommit(err)
		}
	}
	if err := d.m.Flush(); err != nil {
		// The flog entries may or may not reach the disk: storing the map
		// now could put a map page there first. Stop writing; reopening
		// recovers from whatever the disk and the log hold.
		return d.breakCommit(err)
	}
	for _, a := range d.arenaList() {
		if err := a.pending.each(func(premap, newRaw, _ uint32, _ int) error {
			if isTrim(newRaw) {
				return nil
			}
			storeWord32(a.mapArea, int(premap)*MapEntrySize, newRaw)
			// A no-op on a deferred medium but for its range check; a
			// crash medium counts it as a point.
			return d.m.Persist(a.mapOff+int64(premap)*MapEntrySize, MapEntrySize)
		}); err != nil {
			return d.breakCommit(err)
		}
	}
	for _, a := range d.arenaList() {
		a.pending.mu.Lock()
		a.pending.resetLocked(a, df.lanes)
		a.pending.mu.Unlock()
	}
	df.commits.Add(1)
	return nil
}

// isTrim reports whether a raw map entry carries the zero flag alone.
func isTrim(raw uint32) bool { return raw&mapNormal == mapTrimFlag }

// commitFlog writes lane's next flog entry for a pending move of premap from
// oldRaw's block to newRaw's, and makes the old block the lane's free one.
func (a *arena) commitFlog(m Medium, lane int, premap, oldRaw, newRaw uint32) error {
	oldBlock, _, oldErr := decodeMapEntry(premap, oldRaw)
	oldMap := oldBlock
	if oldErr {
		oldMap |= mapErrorFlag
	}
	fe := &a.free[lane]
	e := FlogEntry{LBA: premap, OldMap: oldMap, NewMap: newRaw & mapBlockMask, Seq: fe.seq}
	if err := a.writeFlog(m, lane, int(fe.sub), e); err != nil {
		return err
	}
	fe.sub = 1 - fe.sub
	fe.seq = nextSeq(fe.seq)
	fe.block = oldBlock
	return nil
}

// breakCommit fails every arena after a commit failed part way: from then
// on the device takes no writes and commits nothing.
func (d *Device) breakCommit(cause error) error {
	err := fmt.Errorf("commit: %w", cause)
	for _, a := range d.arenaList() {
		err = a.fail(err)
	}
	d.def.broken = err
	return err
}

// Commits is how many commits wrote flog entries on a deferred medium
// (explicit Flushes, Close, and the ones writes forced when every lane's
// block held a write since the last); zero on any other medium.
func (d *Device) Commits() uint64 {
	if d.def == nil {
		return 0
	}
	return d.def.commits.Load()
}

// Replayed is how many writes Open found in the pending log of a process
// that was killed, and committed.
func (d *Device) Replayed() int { return d.replayed }
