package btt

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// The images below are each damaged so that one block has two owners, the
// way a power loss in flush mode or a buggy writer can leave a BTT. Served
// read-write, each turns writes into in-place overwrites of live sectors;
// Open refuses them, and writes nothing doing so. Every image also holds a
// write the flog recorded and the map missed, so an Open that checked
// after recovering (or not at all) would change the medium.

// conflictImage is a formatted BTT with LBAs 100 and 200 written and an
// interrupted write of LBA 9 that recovery would complete.
func conflictImage(t *testing.T) (*memMedium, *arena) {
	t.Helper()
	m, d := formatOpen(t, 32<<20, 4096)
	for _, lba := range []uint64{100, 200} {
		if err := d.WriteV(lba, [][]byte{pattern(4096, lba, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	interruptedWrite(t, d, 9, pattern(4096, 9, 2), afterFlog)
	return m, d.arenaList()[0]
}

// giveFreeBlock makes block the free block of lane, as a flog entry that
// moved nothing would: the lane's next entry, old and new both block.
func giveFreeBlock(a *arena, lane int, block uint32) {
	fe := a.free[lane]
	e := FlogEntry{LBA: uint32(lane), OldMap: block, NewMap: block, Seq: fe.seq}
	e.encode(a.flogArea[lane*FlogGroupSize+a.logIndex[fe.sub]*FlogEntrySize:])
}

// mustRefuseUnchanged opens m read-write and wants an ErrCorrupt that
// names the conflict, with the medium as it was.
func mustRefuseUnchanged(t *testing.T, m *memMedium, conflict string) {
	t.Helper()
	before := bytes.Clone(m.buf)
	d, err := Open(m, Options{})
	if !errors.Is(err, ErrCorrupt) || d != nil {
		t.Fatalf("read-write open of a block with two owners: %v, want ErrCorrupt", err)
	}
	if !strings.Contains(err.Error(), conflict) {
		t.Errorf("open: %q does not name the conflict %q", err, conflict)
	}
	t.Log(err)
	if !bytes.Equal(before, m.buf) {
		t.Fatal("the refused open wrote to the medium (recovery ran before the check)")
	}
}

// mustCheckBlocks wants Check to report a block used twice.
func mustCheckBlocks(t *testing.T, m *memMedium, want string) {
	t.Helper()
	rep, err := Check(m, CheckOptions{})
	if err != nil || rep.Consistent {
		t.Fatalf("check: %v, consistent %v", err, rep != nil && rep.Consistent)
	}
	for _, p := range rep.Problems {
		if p.Kind == ProblemBlocks && strings.Contains(p.Message, want) {
			return
		}
	}
	t.Errorf("check does not report %q: %+v", want, rep.Problems)
}

func TestOpenRefusesTwoLanesSharingAFreeBlock(t *testing.T) {
	m, a := conflictImage(t)
	shared := a.free[2].block
	giveFreeBlock(a, 3, shared)
	// Served, lanes 2 and 3 would write the same block at once: each
	// write's data could be the other's.
	mustRefuseUnchanged(t, m, fmt.Sprintf("block %d is owned by lane 2's free list and by lane 3's free list", shared))
	mustCheckBlocks(t, m, fmt.Sprintf("lane 3: free block %d is also the free block of another lane", shared))
}

func TestOpenRefusesAMapEntryOnALaneFreeBlock(t *testing.T) {
	m, a := conflictImage(t)
	free := a.free[3].block
	storeWord32(a.mapArea, 400*MapEntrySize, free|mapNormal)
	// Served, the next write through lane 3, to any LBA, would overwrite
	// LBA 400 in place.
	mustRefuseUnchanged(t, m, fmt.Sprintf("block %d is owned by lane 3's free list and by LBA 400", free))
	mustCheckBlocks(t, m, fmt.Sprintf("LBA 400 maps to block %d, which another LBA or a free list entry already uses", free))
}

func TestOpenRefusesTwoLBAsMappedToOneBlock(t *testing.T) {
	m, a := conflictImage(t)
	block, _, _ := a.lookup(200)
	storeWord32(a.mapArea, 100*MapEntrySize, block|mapNormal)
	// Served, LBA 100 reads LBA 200's data, and a write to either frees
	// the block the other still maps.
	mustRefuseUnchanged(t, m, fmt.Sprintf("block %d is owned by LBA 100 and by LBA 200", block))
	mustCheckBlocks(t, m, fmt.Sprintf("LBA 200 maps to block %d", block))
}

// The check judges the arena recovery would leave: a pending move onto a
// block another LBA already maps is a conflict only once it is completed.
func TestOpenRefusesAPendingMoveOntoABlockAnotherLBAMaps(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	target := a.free[0].block
	interruptedWrite(t, d, 9, pattern(4096, 9, 2), afterFlog) // LBA 9 -> target, pending
	storeWord32(a.mapArea, 300*MapEntrySize, target|mapNormal)
	mustRefuseUnchanged(t, m, fmt.Sprintf("block %d is owned by LBA 9 and by LBA 300", target))
}

// A pending move looks like a conflict on the medium (the LBA still maps
// the block the flog already gives the lane back); after recovery it is
// none, and the image opens and recovers.
func TestOpenOfAHealthyImageWithAPendingMoveRecoversIt(t *testing.T) {
	m, _ := conflictImage(t)
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if d.Recovered() != 1 {
		t.Fatalf("recovered %d writes, want 1", d.Recovered())
	}
	if got := readSector(t, d, 9); !bytes.Equal(got, pattern(4096, 9, 2)) {
		t.Fatal("LBA 9 does not hold the recovered write")
	}
	mustBeConsistent(t, m)
}

// A read-only device writes nothing, so a conflict cannot spread through
// it: it opens for inspection and serves what the medium holds.
func TestReadOnlyOpenOfAConflictedImageServesItAsItIs(t *testing.T) {
	m, a := conflictImage(t)
	block, _, _ := a.lookup(200)
	storeWord32(a.mapArea, 100*MapEntrySize, block|mapNormal)
	before := bytes.Clone(m.buf)
	d, err := Open(m, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open: %v", err)
	}
	if got := readSector(t, d, 100); !bytes.Equal(got, pattern(4096, 200, 1)) {
		t.Error("LBA 100 does not read the block its map entry names")
	}
	if err := d.WriteV(100, [][]byte{make([]byte, 4096)}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write: %v, want ErrReadOnly", err)
	}
	d.Close()
	if !bytes.Equal(before, m.buf) {
		t.Fatal("a read-only open wrote to the medium")
	}
}
