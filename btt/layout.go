package btt

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// On-media layout. Every structure the BTT keeps on the medium is defined in
// this file, with its byte offsets, exactly as drivers/nvdimm/btt.h and the
// UEFI 2.7 "Block Translation Table (BTT) Layout" lay them out. All integers
// are little-endian.
//
// One arena, at offsets relative to its info block:
//
//	+--------------+ 0
//	| info block   | 4 KiB
//	+--------------+ dataoff (4 KiB)
//	| data blocks  | internal_nlba * internal_lbasize (rounded up to 4 KiB)
//	+--------------+ mapoff
//	| map          | external_nlba * 4 (rounded up to 4 KiB)
//	+--------------+ logoff
//	| flog         | nfree * 64 (rounded up to 4 KiB)
//	+--------------+ info2off
//	| info2 (copy) | 4 KiB
//	+--------------+ nextoff (or end)

const (
	// InfoSize is the size of an info block (struct btt_sb).
	InfoSize = 4096
	// pageSize is BTT_PG_SIZE: the alignment of every area in an arena.
	pageSize = 4096
	// MapEntrySize is the size of one map entry.
	MapEntrySize = 4
	// FlogEntrySize is the size of one flog entry (struct log_entry).
	FlogEntrySize = 16
	// FlogGroupSize is the size of one lane's flog group: four entry slots,
	// two of them used (struct log_group).
	FlogGroupSize = 4 * FlogEntrySize
	// DefaultNFree is the number of free blocks (and lanes) per arena the
	// kernel writes: ND_MAX_LANES.
	DefaultNFree = 256
	// MaxNFree is the most free blocks per arena Open accepts.
	MaxNFree = 1 << 16
	// ArenaMinSize and ArenaMaxSize bound one arena (ARENA_MIN_SIZE,
	// ARENA_MAX_SIZE). A namespace smaller than ArenaMinSize holds no BTT.
	ArenaMinSize = 1 << 24
	ArenaMaxSize = 1 << 39
	// internalLBAAlign is INT_LBASIZE_ALIGNMENT: internal blocks are
	// external_lbasize rounded up to a multiple of 64 bytes.
	internalLBAAlign = 64
	// mapLockSpan is how many map entries share one CPU cache line, and so one
	// map lock (the kernel hashes premap*MAP_ENT_SIZE/L1_CACHE_BYTES).
	mapLockSpan = 64 / MapEntrySize
	// v11Offset is where a version 1.1 BTT starts inside its namespace
	// (nd_btt->initial_offset for label-less and NVDIMM_CCLASS_BTT
	// namespaces). Version 2.0 starts at 0.
	v11Offset = 4096
)

// Signature is the first 16 bytes of every info block.
var Signature = [16]byte{'B', 'T', 'T', '_', 'A', 'R', 'E', 'N', 'A', '_', 'I', 'N', 'F', 'O', 0, 0}

// Info block flags.
const (
	// InfoFlagError marks an arena whose metadata the writer found
	// inconsistent; the kernel (and nvblk) then refuse writes to it.
	InfoFlagError = 0x1
)

// Map entry bits. A premap LBA's entry is a postmap block number with two flag
// bits on top: both clear is the initial identity state (postmap = premap),
// both set is a normal mapping, Z alone means the block reads as zeroes
// (trimmed), E alone means a media error.
const (
	mapTrimFlag   = 1 << 31 // Z
	mapErrorFlag  = 1 << 30 // E
	mapNormal     = mapTrimFlag | mapErrorFlag
	mapBlockMask  = ^uint32(mapNormal)
	maxPostmapLBA = mapBlockMask
)

// Version is a BTT layout version (major.minor).
type Version struct{ Major, Minor uint16 }

// The two versions the kernel knows. 1.1 is what it writes on a label-less
// namespace (and the UEFI 2.7 layout names 2.0, used on labelled namespaces of
// claim class BTT2). They differ only in where the first arena starts.
var (
	Version11 = Version{1, 1}
	Version20 = Version{2, 0}
)

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// initialOffset is where the first arena begins inside the namespace.
func (v Version) initialOffset() int64 {
	if v.Major == 1 {
		return v11Offset
	}
	return 0
}

// Info is an arena's info block (struct btt_sb).
type Info struct {
	Signature       [16]byte // 0
	UUID            [16]byte // 16
	ParentUUID      [16]byte // 32
	Flags           uint32   // 48
	Version         Version  // 52: major (u16), 54: minor (u16)
	ExternalLBASize uint32   // 56
	ExternalNLBA    uint32   // 60
	InternalLBASize uint32   // 64
	InternalNLBA    uint32   // 68
	NFree           uint32   // 72
	InfoSize        uint32   // 76
	NextOff         uint64   // 80: relative to this info block; 0 = last arena
	DataOff         uint64   // 88: relative to this info block
	MapOff          uint64   // 96
	LogOff          uint64   // 104
	Info2Off        uint64   // 112
	// 120..4087: zero padding
	Checksum uint64 // 4088: nd_fletcher64 of the block with this field zero
}

const infoChecksumOff = 4088

// MarshalBinary encodes the info block into its 4096 on-media bytes, with the
// checksum computed over the encoding (the Checksum field is ignored).
func (in *Info) MarshalBinary() ([]byte, error) {
	b := make([]byte, InfoSize)
	in.encode(b)
	return b, nil
}

func (in *Info) encode(b []byte) {
	_ = b[InfoSize-1]
	clear(b[:InfoSize])
	le := binary.LittleEndian
	copy(b[0:16], in.Signature[:])
	copy(b[16:32], in.UUID[:])
	copy(b[32:48], in.ParentUUID[:])
	le.PutUint32(b[48:], in.Flags)
	le.PutUint16(b[52:], in.Version.Major)
	le.PutUint16(b[54:], in.Version.Minor)
	le.PutUint32(b[56:], in.ExternalLBASize)
	le.PutUint32(b[60:], in.ExternalNLBA)
	le.PutUint32(b[64:], in.InternalLBASize)
	le.PutUint32(b[68:], in.InternalNLBA)
	le.PutUint32(b[72:], in.NFree)
	le.PutUint32(b[76:], in.InfoSize)
	le.PutUint64(b[80:], in.NextOff)
	le.PutUint64(b[88:], in.DataOff)
	le.PutUint64(b[96:], in.MapOff)
	le.PutUint64(b[104:], in.LogOff)
	le.PutUint64(b[112:], in.Info2Off)
	le.PutUint64(b[infoChecksumOff:], infoChecksum(b))
}

// Errors from decoding an info block: a missing signature means "no BTT
// here", a bad checksum means a damaged one.
var (
	errNoSignature = errors.New("no BTT_ARENA_INFO signature")
	errChecksum    = errors.New("info block checksum mismatch")
)

// UnmarshalBinary decodes and validates (signature and checksum) an info
// block. It does not judge the geometry: Open does, when it walks the arenas.
func (in *Info) UnmarshalBinary(b []byte) error {
	if err := in.decode(b); err != nil {
		return fmt.Errorf("btt: %w", err)
	}
	return nil
}

// decode is UnmarshalBinary without the package prefix, for the callers
// inside the package that wrap its error in their own context.
func (in *Info) decode(b []byte) error {
	if len(b) < InfoSize {
		return fmt.Errorf("info block is %d bytes, want %d", len(b), InfoSize)
	}
	le := binary.LittleEndian
	copy(in.Signature[:], b[0:16])
	if in.Signature != Signature {
		return errNoSignature
	}
	copy(in.UUID[:], b[16:32])
	copy(in.ParentUUID[:], b[32:48])
	in.Flags = le.Uint32(b[48:])
	in.Version.Major = le.Uint16(b[52:])
	in.Version.Minor = le.Uint16(b[54:])
	in.ExternalLBASize = le.Uint32(b[56:])
	in.ExternalNLBA = le.Uint32(b[60:])
	in.InternalLBASize = le.Uint32(b[64:])
	in.InternalNLBA = le.Uint32(b[68:])
	in.NFree = le.Uint32(b[72:])
	in.InfoSize = le.Uint32(b[76:])
	in.NextOff = le.Uint64(b[80:])
	in.DataOff = le.Uint64(b[88:])
	in.MapOff = le.Uint64(b[96:])
	in.LogOff = le.Uint64(b[104:])
	in.Info2Off = le.Uint64(b[112:])
	in.Checksum = le.Uint64(b[infoChecksumOff:])
	if want := infoChecksum(b[:InfoSize]); in.Checksum != want {
		return fmt.Errorf("%w: stored %#016x, computed %#016x", errChecksum, in.Checksum, want)
	}
	return nil
}

// infoChecksum is nd_sb_checksum: Fletcher-64 over the 4 KiB block read as
// little-endian 32-bit words, with the checksum field taken as zero.
func infoChecksum(b []byte) uint64 {
	var lo uint32
	var hi uint64
	for i := 0; i < InfoSize; i += 4 {
		w := binary.LittleEndian.Uint32(b[i:])
		if i >= infoChecksumOff {
			w = 0
		}
		lo += w
		hi += uint64(lo)
	}
	return hi<<32 | uint64(lo)
}

// FlogEntry is one slot of a lane's flog group (struct log_entry): the record
// of the lane's last write. OldMap is the block the write freed (the lane's
// next free block), NewMap the block it wrote.
type FlogEntry struct {
	LBA    uint32 // 0: premap LBA written
	OldMap uint32 // 4: previous postmap block (may carry map flags)
	NewMap uint32 // 8: new postmap block (may carry map flags)
	Seq    uint32 // 12: 1, 2, 3, 1, ...; 0 = slot never written
}

func decodeFlogEntry(b []byte) FlogEntry {
	le := binary.LittleEndian
	return FlogEntry{LBA: le.Uint32(b[0:]), OldMap: le.Uint32(b[4:]), NewMap: le.Uint32(b[8:]), Seq: le.Uint32(b[12:])}
}

func (e FlogEntry) encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], e.LBA)
	le.PutUint32(b[4:], e.OldMap)
	le.PutUint32(b[8:], e.NewMap)
	le.PutUint32(b[12:], e.Seq)
}

// halves returns the entry as the two 8-byte words the writer stores (and
// persists) one after the other: lba|old_map, then new_map|seq. A crash
// between them leaves the old sequence number, so the half-written entry is
// ignored on recovery.
func (e FlogEntry) halves() (lo, hi uint64) {
	return uint64(e.LBA) | uint64(e.OldMap)<<32, uint64(e.NewMap) | uint64(e.Seq)<<32
}

// isPadding reports whether a slot is all zeroes: an unused slot.
func (e FlogEntry) isPadding() bool { return e == FlogEntry{} }

// nextSeq is nd_inc_seq: 1 -> 2 -> 3 -> 1. Zero stays zero (never written).
func nextSeq(s uint32) uint32 { return [4]uint32{0, 2, 3, 1}[s&3] }

// SupportedLBASizes are the external sector sizes the kernel's BTT accepts
// (btt_lbasize_supported). Sizes above the data sector size carry
// per-sector metadata (protection information) bytes.
var SupportedLBASizes = []uint32{512, 520, 528, 4096, 4104, 4160, 4224}

func supportedLBASize(s uint32) bool {
	for _, v := range SupportedLBASizes {
		if v == s {
			return true
		}
	}
	return false
}

// internalLBASize is the on-media block size for an external LBA size.
func internalLBASize(external uint32) uint32 {
	return (external + internalLBAAlign - 1) / internalLBAAlign * internalLBAAlign
}

// dataSectorSize is the part of an LBA that holds data (btt->sector_size):
// 4096 for the 4 KiB family, 512 otherwise.
func dataSectorSize(lbasize uint32) uint32 {
	if lbasize >= 4096 {
		return 4096
	}
	return 512
}
