package btt

import (
	"bytes"
	"encoding/binary"
)

// The pending log is where a device on a deferred medium (DeferredMedium)
// keeps the map changes it has made since its last commit: for each LBA
// written since, the block it now maps to, the map entry it had before,
// and the lane whose free block the write used. Readers look LBAs up in it
// before the map; commit turns it into flog entries and map stores, then
// empties it. It lives in memory that outlives the process but not the
// machine (ProcessLogMedium), so that a device reopened after a kill -9
// finds the writes it completed and finishes committing them, while one
// reopened after a power loss finds none and serves the image as its last
// commit left it.
//
// It is not part of the BTT format: the kernel never sees it. Layout,
// little-endian, offsets in bytes:
//
//	 0  [8]  magic "NVBLKPL1"
//	 8  u32  arenas
//	12  u32  slots per arena (a power of two)
//	16  [16] the BTT's uuid
//	32  [32] zero
//	64  the slots, arena 0's first, pendingSlotSize bytes each:
//	     0  u64  (premap + 1) << 32 | new map entry; 0 is an empty slot
//	     8  u64  lane << 32 | the map entry before the first write
//
// A slot's first word is one atomic store: readers in the process load it
// whole, so they never pair one LBA with another's block; the second word
// is stored before the first publishes the slot.
const (
	pendingLogMagic      = "NVBLKPL1"
	pendingLogHeaderSize = 64
	pendingSlotSize      = 16

	plOffArenas = 8
	plOffSlots  = 12
	plOffUUID   = 16
)

// pendingLogSize is the bytes a pending log for arenas arenas of slots slots
// takes.
func pendingLogSize(arenas, slots int) int {
	return pendingLogHeaderSize + arenas*slots*pendingSlotSize
}

// pendingSlots is the table size for a device of lanes lanes: every entry
// uses a different lane's free block, so at most lanes entries are ever in
// use, and twice that keeps linear probing short.
func pendingSlots(lanes int) int {
	n := 8
	for n < 2*lanes {
		n <<= 1
	}
	return n
}

// pendingLogHeader is the log's header as a device of that shape writes it.
func pendingLogHeader(arenas, slots int, uuid [16]byte) []byte {
	h := make([]byte, pendingLogHeaderSize)
	copy(h, pendingLogMagic)
	binary.LittleEndian.PutUint32(h[plOffArenas:], uint32(arenas))
	binary.LittleEndian.PutUint32(h[plOffSlots:], uint32(slots))
	copy(h[plOffUUID:], uuid[:])
	return h
}

// pendingLogState is what a log region holds for a device of that shape.
type pendingLogState int

const (
	pendingLogBlank   pendingLogState = iota // never written, or another BTT's
	pendingLogOurs                           // this BTT's, in this shape
	pendingLogForeign                        // this BTT's uuid, another shape
)

func classifyPendingLog(log []byte, arenas, slots int, uuid [16]byte) pendingLogState {
	h := log[:pendingLogHeaderSize]
	if string(h[:len(pendingLogMagic)]) != pendingLogMagic || !bytes.Equal(h[plOffUUID:plOffUUID+16], uuid[:]) {
		return pendingLogBlank
	}
	if bytes.Equal(h, pendingLogHeader(arenas, slots, uuid)) {
		return pendingLogOurs
	}
	return pendingLogForeign
}

// pendingWord0 and pendingWord1 encode a slot; the decoders undo them.
func pendingWord0(premap, newRaw uint32) uint64   { return uint64(premap+1)<<32 | uint64(newRaw) }
func pendingWord1(oldRaw uint32, lane int) uint64 { return uint64(lane)<<32 | uint64(oldRaw) }

func decodePendingWord0(w uint64) (premap, newRaw uint32)   { return uint32(w>>32) - 1, uint32(w) }
func decodePendingWord1(w uint64) (oldRaw uint32, lane int) { return uint32(w), int(w >> 32) }
