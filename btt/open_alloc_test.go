package btt

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
)

// openAllocates is how many bytes of heap Open allocates on m.
func openAllocates(t *testing.T, m Medium) uint64 {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	d, err := Open(m, Options{ReadOnly: true})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(d)
	return after.TotalAlloc - before.TotalAlloc
}

// An info block may claim up to 65536 lanes; Open keeps state for the 256
// it uses, so such an arena costs what a kernel-made one does, not the
// ~5 MiB of lane state, map locks and free list a crafted chain of them
// once made Open allocate per arena.
func TestOpenOfAnArenaWith65536LanesAllocatesWhatOneWith256Does(t *testing.T) {
	lanes := func(nfree uint32) uint64 {
		m := newMemMedium(48 << 20)
		if err := Format(m, FormatOptions{LBASize: 512, NFree: nfree}); err != nil {
			t.Fatal(err)
		}
		return openAllocates(t, m)
	}
	usual, crafted := lanes(DefaultNFree), lanes(MaxNFree)
	t.Logf("Open allocates %d bytes with 256 lanes, %d with 65536", usual, crafted)
	if crafted > 2*usual+64<<10 {
		t.Fatalf("Open of an arena of 65536 lanes allocates %d bytes, one of 256 %d", crafted, usual)
	}
}

// tinyArena writes, at off, an info block (and its backup) of an arena of
// nfree 1 and two blocks of 512 bytes, the smallest geometry an info
// block can describe, chained to the next at off+size (none if last).
func tinyArena(m *memMedium, off int64, last bool) (size int64) {
	const dataOff, mapOff, logOff, info2Off = 4096, 4096 + 1024, 4096 + 1024 + 512, 4096 + 1024 + 1024
	size = info2Off + InfoSize
	in := Info{Signature: Signature, UUID: [16]byte{1}, Version: Version11, ExternalLBASize: 512, ExternalNLBA: 1,
		InternalLBASize: 512, InternalNLBA: 2, NFree: 1, InfoSize: InfoSize,
		DataOff: dataOff, MapOff: mapOff, LogOff: logOff, Info2Off: info2Off}
	if !last {
		in.NextOff = uint64(size)
	}
	for _, at := range []int64{off, off + info2Off} {
		in.encode(m.buf[at : at+InfoSize])
	}
	e := FlogEntry{LBA: 0, OldMap: 1, NewMap: 1, Seq: 1}
	e.encode(m.buf[off+logOff:])
	return size
}

// Arenas are never smaller than ArenaMinSize (no writer makes one), which
// bounds how many a medium holds, and so what Open allocates for them.
func TestOpenRefusesAChainOfArenasSmallerThanTheMinimum(t *testing.T) {
	// Each arena starts with at least ArenaMinSize of medium left, as
	// the chain must; only the arenas themselves are tiny.
	m := newMemMedium(v11Offset + 1000*tinyArena(newMemMedium(64<<10), 0, true) + ArenaMinSize)
	off := int64(v11Offset)
	for i := range 1000 {
		off += tinyArena(m, off, i == 999)
	}
	_, err := Open(m, Options{})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of 1000 arenas of %d bytes: %v, want ErrCorrupt", (off-v11Offset)/1000, err)
	}
	t.Log(err)
}

// The smallest arena a writer makes still opens: ArenaMinSize, the tail a
// medium of exactly that size (plus the 1.1 offset) holds.
func TestOpenAcceptsAnArenaOfTheMinimumSize(t *testing.T) {
	m := newMemMedium(v11Offset + ArenaMinSize)
	if err := Format(m, FormatOptions{LBASize: 512}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(m, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(m.buf[v11Offset+80:]); got != 0 {
		t.Fatalf("nextoff %d, want a single arena", got)
	}
}
