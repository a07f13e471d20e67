package btt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// twoArenas builds a medium holding two 16 MiB arenas chained by nextoff,
// as a kernel-formatted namespace over 512 GiB would, only small.
func twoArenas(t *testing.T) *memMedium {
	t.Helper()
	const arena = ArenaMinSize
	one := newMemMedium(v11Offset + arena)
	if err := Format(one, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	m := newMemMedium(v11Offset + 2*arena)
	copy(m.buf[v11Offset:], one.buf[v11Offset:])
	copy(m.buf[v11Offset+arena:], one.buf[v11Offset:])
	d, err := Open(one, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{v11Offset, d.arenaList()[0].info2Off} {
		b := m.buf[off : off+InfoSize]
		binary.LittleEndian.PutUint64(b[80:], arena) // nextoff
		binary.LittleEndian.PutUint64(b[infoChecksumOff:], infoChecksum(b))
	}
	return m
}

// TestOpenWritesNothingWhenALaterArenaIsCorrupt: recovery of arena 0 must not
// reach the medium when arena 1 then makes Open fail.
func TestOpenWritesNothingWhenALaterArenaIsCorrupt(t *testing.T) {
	m := twoArenas(t)
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatalf("two-arena medium: %v", err)
	}
	if len(d.arenaList()) != 2 {
		t.Fatalf("%d arenas, want 2", len(d.arenaList()))
	}
	if err := d.WriteV(3, [][]byte{pattern(4096, 3, 1)}); err != nil {
		t.Fatal(err)
	}
	interruptedWrite(t, d, 3, pattern(4096, 3, 2), afterFlog) // arena 0: pending
	a1 := d.arenaList()[1]
	e := FlogEntry{LBA: 3, OldMap: a1.externalNLBA + 3, NewMap: a1.externalNLBA + 3, Seq: 2}
	e.encode(a1.flogArea[3*FlogGroupSize:])
	e.encode(a1.flogArea[3*FlogGroupSize+FlogEntrySize:])
	before := bytes.Clone(m.buf)
	if _, err := Open(m, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v, want ErrCorrupt", err)
	}
	if !bytes.Equal(before, m.buf) {
		t.Fatal("Open failed on arena 1 after writing arena 0's recovery")
	}
}
