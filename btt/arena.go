package btt

import (
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
)

// arena is one arena of an open BTT: its geometry, windows into the medium,
// and the in-memory state the kernel keeps beside it (free list, read
// tracking table, map locks).
type arena struct {
	index int
	arenaGeometry
	info          Info
	externalStart uint64 // first external LBA of this arena

	// Windows into the medium's mapping: the map, the flog and the data area.
	mapArea, flogArea, dataArea []byte

	// logIndex are the two flog group slots in use: (0,1) in the layout
	// kernels since 4.15 write, (0,2) in older ones.
	logIndex [2]int

	// free[lane] is the lane's free block and where its next flog entry goes,
	// for the lanes the device uses (at most maxLanes, however many the
	// arena has). Owned by the goroutine holding that lane; no lock.
	free []freeEntry

	// rtt[lane] is the range of blocks the lane's reader may be copying
	// (see rttRange), 0 when none: a run of sectors in consecutive blocks
	// is published once, as one range. Written by the reader, read by
	// every writer, atomically (one 64-bit word, so a writer never sees
	// half a range).
	rtt []atomic.Uint64
	// readerLanes has bit i set once lane i has read from this arena; a bit
	// is never cleared. A reader sets its bit before it first publishes in
	// rtt, so a writer scans only the slots of lanes that have read, and
	// readers share no counter they must update on every read (a shared
	// one cost two-goroutine reads 7 %). With a vhost queue per lane that
	// is a slot or two; with lanes taken per call, at most every slot.
	readerLanes []atomic.Uint64

	// mapLocks serialise read-modify-write of map entries; entry premap uses
	// mapLocks[premap/mapLockSpan % len(mapLocks)]. One table, shared by
	// every arena of the device.
	mapLocks []paddedMutex

	// pending is the pending table and clean blocks on a deferred medium
	// (deferred.go), else nil.
	pending *pendingSet

	// failed is set, once, when a write failed part way through its
	// commit (writeSector): the arena then refuses writes with it.
	failed atomic.Pointer[error]
}

// fail puts the arena in the failed state, because of cause, and returns
// the error its writes get from now on.
func (a *arena) fail(cause error) error {
	err := fmt.Errorf("%w (arena %d, since: %w)", ErrArenaFailed, a.index, cause)
	if a.failed.CompareAndSwap(nil, &err) {
		return err
	}
	return *a.failed.Load()
}

// paddedMutex keeps each map lock on its own cache line, so writers on
// different lines do not contend for the line that holds the lock.
type paddedMutex struct {
	sync.Mutex
	_ [64 - 8]byte
}

type freeEntry struct {
	block uint32 // the postmap block the lane writes next
	sub   uint8  // which of the two slots (0 or 1) its next flog entry overwrites
	seq   uint32 // the sequence number of that next entry
}

// markReader records, once, that lane id reads from the arena.
func (a *arena) markReader(id int) {
	w, bit := &a.readerLanes[id/64], uint64(1)<<(id%64)
	if w.Load()&bit == 0 {
		w.Or(bit)
	}
}

// rttRange is the rtt word publishing blocks [first, first+n), n >= 1:
// the end in the high half, the first block in the low half. The empty
// slot, 0, is the range [0, 0) and covers no block.
func rttRange(first, n uint32) uint64 { return uint64(first+n)<<32 | uint64(first) }

// rttCovers reports whether the rtt word w publishes block.
func rttCovers(w uint64, block uint32) bool {
	return block >= uint32(w) && block < uint32(w>>32)
}

// waitForReaders returns once no lane's rtt slot publishes block: a reader
// that published it before it became free may still be copying it.
func (a *arena) waitForReaders(block uint32) {
	for wi := range a.readerLanes {
		for m := a.readerLanes[wi].Load(); m != 0; m &= m - 1 {
			slot := &a.rtt[wi*64+bits.TrailingZeros64(m)]
			for rttCovers(slot.Load(), block) {
				runtime.Gosched()
			}
		}
	}
}

// mapEntry returns the raw map entry of a premap LBA: its pending entry on
// a deferred medium, if it was written since the last commit, else the
// map's.
func (a *arena) mapEntry(premap uint32) uint32 {
	if p := a.pending; p != nil && p.n.Load() != 0 {
		if raw, ok := p.get(premap); ok {
			return raw
		}
	}
	return loadWord32(a.mapArea, int(premap)*MapEntrySize)
}

// mapAreaEntry returns the raw entry the map itself holds.
func (a *arena) mapAreaEntry(premap uint32) uint32 {
	return loadWord32(a.mapArea, int(premap)*MapEntrySize)
}

// lookup resolves a premap LBA to its postmap block and flags, the way
// btt_map_read does: an entry with neither flag is the initial identity.
func (a *arena) lookup(premap uint32) (block uint32, trim, mediaErr bool) {
	return decodeMapEntry(premap, a.mapEntry(premap))
}

func decodeMapEntry(premap, raw uint32) (block uint32, trim, mediaErr bool) {
	switch raw & mapNormal {
	case 0:
		return premap, false, false
	case mapNormal:
		return raw & mapBlockMask, false, false
	case mapTrimFlag:
		return raw & mapBlockMask, true, false
	default:
		return raw & mapBlockMask, false, true
	}
}

func (a *arena) mapLock(premap uint32) *sync.Mutex {
	return &a.mapLocks[(premap/mapLockSpan)%uint32(len(a.mapLocks))].Mutex
}

// flogGroup decodes the lane's four flog slots.
func (a *arena) flogGroup(lane int) [4]FlogEntry {
	var g [4]FlogEntry
	base := lane * FlogGroupSize
	for i := range g {
		g[i] = decodeFlogEntry(a.flogArea[base+i*FlogEntrySize:])
	}
	return g
}

// flogCurrent returns, for a lane's group, the newest of its two entries and
// which sub-slot (0 or 1) holds it, following btt_log_get_old: sequence
// numbers cycle 1->2->3->1, so the newer of two is the one a single step
// ahead.
func flogCurrent(g [4]FlogEntry, idx [2]int) (newest FlogEntry, sub int, err error) {
	s0, s1 := g[idx[0]].Seq, g[idx[1]].Seq
	if s0 == 0 {
		// Slot 0 never written: the kernel treats it as the old one.
		if s1 == 0 {
			return FlogEntry{}, 0, fmt.Errorf("%w: flog group has no entry", ErrCorrupt)
		}
		return g[idx[1]], 1, nil
	}
	if s0 > 3 || s1 > 3 || s0 == s1 || s0+s1 > 5 {
		return FlogEntry{}, 0, fmt.Errorf("%w: flog sequence numbers [%d, %d]", ErrCorrupt, s0, s1)
	}
	if s1 == 0 || nextSeq(s1) == s0 {
		return g[idx[0]], 0, nil
	}
	return g[idx[1]], 1, nil
}

// detectLogIndex finds which two slots of each flog group hold entries, as
// log_set_indices does: a group in the initial state has three zero slots and
// says nothing; the first group with two entries fixes the pair, and every
// other group must agree. A BTT never written in any lane is taken as the
// current (0,1) layout.
func detectLogIndex(a *arena) ([2]int, error) {
	idx := [2]int{-1, -1}
	for lane := 0; lane < int(a.nfree); lane++ {
		g := a.flogGroup(lane)
		var slots [4]int // no allocation per lane: an arena may have 65536
		used := slots[:0]
		for j, e := range g {
			if !e.isPadding() {
				used = append(used, j)
			}
		}
		switch {
		case len(used) > 2:
			return idx, fmt.Errorf("%w: flog lane %d has %d entries in use", ErrCorrupt, lane, len(used))
		case len(used) == 2:
			if idx[0] < 0 {
				idx = [2]int{used[0], used[1]}
			} else if used[0] != idx[0] || used[1] != idx[1] {
				return idx, fmt.Errorf("%w: flog lane %d uses slots %v, earlier lanes %v", ErrCorrupt, lane, [2]int{used[0], used[1]}, idx)
			}
		case len(used) == 1:
			if used[0] != 0 && (idx[0] < 0 || used[0] != idx[1]) {
				return idx, fmt.Errorf("%w: flog lane %d uses slot %d alone", ErrCorrupt, lane, used[0])
			}
		}
	}
	if idx[0] < 0 {
		return [2]int{0, 1}, nil
	}
	if idx != [2]int{0, 1} && idx != [2]int{0, 2} {
		return idx, fmt.Errorf("%w: unknown flog padding scheme %v", ErrCorrupt, idx)
	}
	return idx, nil
}

// pendingMove is a write the flog recorded but the map does not show: the
// data and the flog entry are durable, the map update is not.
type pendingMove struct {
	lane   int
	premap uint32
	newMap uint32
}

// keepFree records lane's free block, for the lanes the arena keeps: a
// scanFlog callback.
func (a *arena) keepFree(lane int, fe freeEntry) {
	if lane < len(a.free) {
		a.free[lane] = fe
	}
}

// scanFlog walks every lane's flog group the way btt_freelist_init does,
// checking each lane's newest entry. It calls free (when non-nil) with the
// lane's free block and where its next entry goes, and pending for each
// move recovery must complete: a write the flog recorded but the map does
// not show. It keeps nothing itself, so the caller decides what a lane
// costs in memory.
func (a *arena) scanFlog(free func(lane int, fe freeEntry), pending func(pendingMove)) error {
	for lane := 0; lane < int(a.nfree); lane++ {
		e, sub, err := flogCurrent(a.flogGroup(lane), a.logIndex)
		if err != nil {
			return fmt.Errorf("lane %d: %w", lane, err)
		}
		oldBlock, newBlock := e.OldMap&mapBlockMask, e.NewMap&mapBlockMask
		if oldBlock >= a.internalNLBA || newBlock >= a.internalNLBA {
			return fmt.Errorf("%w: lane %d flog entry %+v points past %d blocks", ErrCorrupt, lane, e, a.internalNLBA)
		}
		fe := freeEntry{block: oldBlock, sub: uint8(1 - sub), seq: nextSeq(e.Seq)}
		if free != nil {
			free(lane, fe)
		}
		if oldBlock == newBlock {
			continue // the format's entry: nothing moved
		}
		if e.LBA >= a.externalNLBA {
			return fmt.Errorf("%w: lane %d flog entry for LBA %d past %d", ErrCorrupt, lane, e.LBA, a.externalNLBA)
		}
		if cur, _, _ := a.lookup(e.LBA); cur != newBlock && cur == oldBlock && pending != nil {
			pending(pendingMove{lane: lane, premap: e.LBA, newMap: newBlock})
		}
	}
	return nil
}
