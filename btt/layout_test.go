package btt

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
)

func TestInfoBlockFieldOffsets(t *testing.T) {
	in := Info{
		Signature:       Signature,
		UUID:            [16]byte{0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f},
		ParentUUID:      [16]byte{0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f},
		Flags:           0x30313233,
		Version:         Version{0x3435, 0x3637},
		ExternalLBASize: 0x38393a3b,
		ExternalNLBA:    0x3c3d3e3f,
		InternalLBASize: 0x40414243,
		InternalNLBA:    0x44454647,
		NFree:           0x48494a4b,
		InfoSize:        0x4c4d4e4f,
		NextOff:         0x5051525354555657,
		DataOff:         0x58595a5b5c5d5e5f,
		MapOff:          0x6061626364656667,
		LogOff:          0x68696a6b6c6d6e6f,
		Info2Off:        0x7071727374757677,
	}
	b, _ := in.MarshalBinary()
	if len(b) != 4096 {
		t.Fatalf("info block is %d bytes, want 4096", len(b))
	}
	// The first 120 bytes as drivers/nvdimm/btt.h lays out struct btt_sb.
	golden := "4254545f4152454e415f494e464f0000" + // signature
		"101112131415161718191a1b1c1d1e1f" + // uuid
		"202122232425262728292a2b2c2d2e2f" + // parent_uuid
		"33323130" + "3534" + "3736" + // flags, version_major, version_minor
		"3b3a3938" + "3f3e3d3c" + "43424140" + "47464544" + // external lbasize/nlba, internal lbasize/nlba
		"4b4a4948" + "4f4e4d4c" + // nfree, infosize
		"5756555453525150" + "5f5e5d5c5b5a5958" + "6766656463626160" + "6f6e6d6c6b6a6968" + "7776757473727170"
	if got := hex.EncodeToString(b[:120]); got != golden {
		t.Errorf("header bytes:\n got %s\nwant %s", got, golden)
	}
	if !bytes.Equal(b[120:4088], make([]byte, 4088-120)) {
		t.Error("padding 120..4088 is not zero")
	}
	var back Info
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatalf("decode own encoding: %v", err)
	}
	back.Checksum = 0
	if back != in {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, in)
	}
}

func TestInfoChecksumIsFletcher64OverLittleEndianWords(t *testing.T) {
	b := make([]byte, InfoSize)
	b[0] = 1                                                       // word 0 = 1: lo stays 1 for all 1024 words, hi counts them
	binary.LittleEndian.PutUint64(b[infoChecksumOff:], 0xdeadbeef) // ignored
	if got, want := infoChecksum(b), uint64(1024)<<32|1; got != want {
		t.Errorf("checksum %#x, want %#x", got, want)
	}
	// lo wraps at 32 bits while hi keeps 64.
	for i := 0; i < 8; i += 4 {
		binary.LittleEndian.PutUint32(b[i:], 0xffffffff)
	}
	lo, hi := uint32(0), uint64(0)
	for i := 0; i < 1024; i++ {
		if i < 2 {
			lo += 0xffffffff
		}
		hi += uint64(lo)
	}
	if got, want := infoChecksum(b), hi<<32|uint64(lo); got != want {
		t.Errorf("checksum %#x, want %#x", got, want)
	}
}

func TestInfoBlockWithBadChecksumIsRejected(t *testing.T) {
	in := Info{Signature: Signature, NFree: 256}
	b, _ := in.MarshalBinary()
	b[100] ^= 1
	var out Info
	if err := out.UnmarshalBinary(b); err == nil {
		t.Fatal("a flipped bit passed the checksum")
	}
}

func TestInfoBlockWithoutSignatureIsNotABTT(t *testing.T) {
	var out Info
	if err := out.UnmarshalBinary(make([]byte, InfoSize)); !errors.Is(err, errNoSignature) {
		t.Fatalf("zero block: %v, want errNoSignature", err)
	}
}

func TestFlogEntryLayoutAndHalves(t *testing.T) {
	e := FlogEntry{LBA: 0x03020100, OldMap: 0x07060504, NewMap: 0x0b0a0908, Seq: 0x0f0e0d0c}
	b := make([]byte, FlogEntrySize)
	e.encode(b)
	if got, want := hex.EncodeToString(b), "000102030405060708090a0b0c0d0e0f"; got != want {
		t.Errorf("entry bytes %s, want %s", got, want)
	}
	lo, hi := e.halves()
	if binary.LittleEndian.Uint64(b[0:]) != lo || binary.LittleEndian.Uint64(b[8:]) != hi {
		t.Errorf("halves %#x %#x do not match the encoding", lo, hi)
	}
	if decodeFlogEntry(b) != e {
		t.Error("decode(encode(e)) != e")
	}
}

func TestSequenceNumbersCycleOneTwoThree(t *testing.T) {
	for _, c := range []struct{ in, out uint32 }{{0, 0}, {1, 2}, {2, 3}, {3, 1}} {
		if got := nextSeq(c.in); got != c.out {
			t.Errorf("nextSeq(%d) = %d, want %d", c.in, got, c.out)
		}
	}
}

func TestInternalLBASizeRoundsToSixtyFourBytes(t *testing.T) {
	want := map[uint32]uint32{512: 512, 520: 576, 528: 576, 4096: 4096, 4104: 4160, 4160: 4160, 4224: 4224}
	for ext, in := range want {
		if got := internalLBASize(ext); got != in {
			t.Errorf("internal lbasize for %d = %d, want %d", ext, got, in)
		}
	}
}

// The kernel's alloc_arena for a 64 MiB label-less namespace with 4 KiB
// sectors, worked by hand from btt.c: rawsize = 64 MiB - 4 KiB.
func TestArenaGeometryOfA64MiBNamespace(t *testing.T) {
	arenas, err := layoutArenas(4096, 64<<20-4096, 4096, DefaultNFree)
	if err != nil {
		t.Fatal(err)
	}
	if len(arenas) != 1 {
		t.Fatalf("%d arenas, want 1", len(arenas))
	}
	g := arenas[0]
	checks := []struct {
		name      string
		got, want int64
	}{
		{"internal_nlba", int64(g.internalNLBA), 16360},
		{"external_nlba", int64(g.externalNLBA), 16104},
		{"infooff", g.infoOff, 4096},
		{"dataoff", g.dataOff, 8192},
		{"mapoff", g.mapOff, 4096 + 67018752},
		{"logoff", g.logOff, 4096 + 67084288},
		{"info2off", g.info2Off, 4096 + 67100672},
		{"nextoff", g.nextOff, 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if end := g.info2Off + InfoSize; end != 64<<20 {
		t.Errorf("arena ends at %d, want the namespace end %d", end, 64<<20)
	}
}

func TestArenasSplitAt512GiBAndDropASmallTail(t *testing.T) {
	raw := int64(ArenaMaxSize) + ArenaMinSize - 4096 // tail too small for a second arena
	arenas, err := layoutArenas(0, raw, 512, DefaultNFree)
	if err != nil {
		t.Fatal(err)
	}
	if len(arenas) != 1 || arenas[0].nextOff != 0 {
		t.Fatalf("got %d arenas (nextoff %d), want 1 with nextoff 0", len(arenas), arenas[0].nextOff)
	}
	arenas, err = layoutArenas(0, ArenaMaxSize+ArenaMinSize, 512, DefaultNFree)
	if err != nil {
		t.Fatal(err)
	}
	if len(arenas) != 2 || arenas[0].nextOff != ArenaMaxSize || arenas[1].infoOff != ArenaMaxSize || arenas[1].nextOff != 0 {
		t.Fatalf("arenas %+v", arenas)
	}
}

func TestFormatRefusesUnsupportedSectorSize(t *testing.T) {
	m := newMemMedium(32 << 20)
	if err := Format(m, FormatOptions{LBASize: 1024}); err == nil {
		t.Fatal("1024-byte sectors accepted")
	}
}

func TestFormatRefusesAMediumBelow16MiB(t *testing.T) {
	m := newMemMedium(16 << 20) // 16 MiB minus the 4 KiB offset of a 1.1 BTT
	if err := Format(m, FormatOptions{}); err == nil {
		t.Fatal("a 16 MiB namespace took a version 1.1 BTT (needs 16 MiB + 4 KiB)")
	}
}
