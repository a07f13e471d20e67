package btt

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
)

// blockClaims records who owns each of an arena's internal_nlba blocks, one
// bit a block: every lane's free block and every map entry's block must be
// a different one, or a write through the lane (or to one LBA) overwrites a
// sector that is still live. Check (every conflict, reported) and Open
// (the first conflict, refused) both build it, the same way.
//
// It models the arena as recovery on Open leaves it, not as the medium holds
// it: moved gives, for an LBA whose write the flog recorded and the map
// missed, the block recovery maps it to. Before recovery that LBA's map
// entry still names the lane's free block (the flog entry's old block), so
// the medium itself would show a conflict on every pending move, and the
// new block (written, not yet mapped) no owner. The kernel completes those
// moves on attach and checks nothing; the state after recovery is the one a
// device serves, so it is the one that must be free of conflicts.
type blockClaims struct {
	a     *arena
	used  []uint64
	moved map[uint32]uint32
}

func newBlockClaims(a *arena, moved map[uint32]uint32) *blockClaims {
	return &blockClaims{a: a, used: make([]uint64, (a.internalNLBA+63)/64), moved: moved}
}

// claim marks block b owned; false if it already was. b is below
// internal_nlba (scanFlog checks free blocks, claimMap map entries).
func (c *blockClaims) claim(b uint32) bool {
	w, bit := b/64, uint64(1)<<(b%64)
	if c.used[w]&bit != 0 {
		return false
	}
	c.used[w] |= bit
	return true
}

func (c *blockClaims) owned(b uint32) bool { return c.used[b/64]&(1<<(b%64)) != 0 }

// mapBlock is the block premap's entry resolves to after recovery: a zero
// entry is the identity, flags are masked (a trimmed or media-error sector
// still owns its block, as in the kernel).
func (c *blockClaims) mapBlock(premap uint32) uint32 {
	if len(c.moved) > 0 {
		if nb, ok := c.moved[premap]; ok {
			return nb
		}
	}
	// The medium is the caller's alone (Check, or Open before it returns
	// the device), so plain loads will do: a few hundred million of them
	// on a large arena.
	raw := binary.LittleEndian.Uint32(c.a.mapArea[int(premap)*MapEntrySize:])
	block, _, _ := decodeMapEntry(premap, raw)
	return block
}

// claimMap claims every map entry's block, after the lanes' free blocks are
// claimed. It calls problem for an entry past the arena (block >=
// internal_nlba, claimed by nothing) and for one whose block already had an
// owner; problem returning false stops the walk. progress, when set, is
// called with the entries walked every 1<<20 entries.
//
// It is the one loop over every map entry Open runs (hundreds of millions
// on a large arena of 512-byte sectors), so the common case costs a load,
// a mask and a bit: pending LBAs are compared in order, not looked up.
func (c *blockClaims) claimMap(problem func(premap, block uint32) bool, progress func(done uint32)) {
	a := c.a
	n, nblocks := a.externalNLBA, a.internalNLBA
	entries := a.mapArea[:int(n)*MapEntrySize]
	used := c.used
	pending := slices.Sorted(maps.Keys(c.moved))
	next := ^uint32(0) // no premap is this large: external_nlba < 2^32
	if len(pending) > 0 {
		next = pending[0]
	}
	for premap := uint32(0); premap < n; {
		// 64 zero entries from a multiple of 64 map, by the identity,
		// to the 64 blocks of one bitmap word: a never-written stretch
		// (most of a fresh or sparse image) is claimed a word at a time.
		if premap%64 == 0 && n-premap >= 64 && next-premap >= 64 && used[premap/64] == 0 &&
			zeroes(entries[premap*MapEntrySize:(premap+64)*MapEntrySize]) {
			used[premap/64] = ^uint64(0)
			premap += 64
		} else {
			raw := binary.LittleEndian.Uint32(entries[premap*MapEntrySize:])
			block := premap // neither flag: the identity (decodeMapEntry)
			if raw&mapNormal != 0 {
				block = raw & mapBlockMask
			}
			if premap == next {
				block = c.moved[premap]
				if pending = pending[1:]; len(pending) > 0 {
					next = pending[0]
				}
			}
			if block >= nblocks || used[block/64]&(1<<(block%64)) != 0 {
				if !problem(premap, block) {
					return
				}
			} else {
				used[block/64] |= 1 << (block % 64)
			}
			premap++
		}
		if progress != nil && premap&(1<<20-1) == 0 {
			progress(premap)
		}
	}
}

// zeroes reports whether b (a multiple of 8 bytes) is all zero bytes.
func zeroes(b []byte) bool {
	var or uint64
	for i := 0; i+8 <= len(b); i += 8 {
		or |= binary.LittleEndian.Uint64(b[i:])
	}
	return or == 0
}

// firstOwner names the owner of block that claimed it first, for an error
// about the one that found it taken: lanes claim before map entries, in
// order, so the first lane whose free block it is, else the first LBA
// mapping to it. Only an Open that is about to fail calls it.
func (c *blockClaims) firstOwner(block uint32) string {
	owner := ""
	// The flog was scanned without error already; it is unchanged.
	_ = c.a.scanFlog(func(lane int, fe freeEntry) {
		if owner == "" && fe.block == block {
			owner = fmt.Sprintf("lane %d's free list", lane)
		}
	}, nil)
	if owner != "" {
		return owner
	}
	for premap := uint32(0); premap < c.a.externalNLBA; premap++ {
		if c.mapBlock(premap) == block {
			return fmt.Sprintf("LBA %d", premap)
		}
	}
	return "an earlier owner" // unreachable: block was claimed
}

// checkOwnership refuses an arena in which a block has two owners, as
// recovery would leave it: two lanes' free blocks, a lane's free block and
// an LBA's, or two LBAs'. Open serves writes through the free list, and
// each of those turns a write into an in-place overwrite of a live sector.
// A map entry past the arena is left to the I/O that meets it (ErrCorrupt
// for that sector): it shares no block, and serving it cannot spread.
func (a *arena) checkOwnership() error {
	moved := make(map[uint32]uint32)
	c := newBlockClaims(a, moved)
	var conflict error
	// Free blocks are claimed as the flog is walked (no list of up to
	// 65536 lanes is kept); the map only once every pending move is known.
	err := a.scanFlog(func(lane int, fe freeEntry) {
		if !c.claim(fe.block) && conflict == nil {
			conflict = fmt.Errorf("%w: block %d is owned by %s and by lane %d's free list", ErrCorrupt, fe.block, c.firstOwner(fe.block), lane)
		}
	}, func(p pendingMove) { moved[p.premap] = p.newMap })
	if err = cmpOr(err, conflict); err != nil {
		return err
	}
	c.claimMap(func(premap, block uint32) bool {
		if block >= a.internalNLBA {
			return true
		}
		conflict = fmt.Errorf("%w: block %d is owned by %s and by LBA %d", ErrCorrupt, block, c.firstOwner(block), premap)
		return false
	}, nil)
	return conflict
}
