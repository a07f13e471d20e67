package btt

import (
	"bytes"
	"errors"
	"testing"
)

// writeStage is how far a simulated write got before the "crash".
type writeStage int

const (
	afterData      writeStage = iota // data block written, flog untouched
	afterFlogFirst                   // first flog half (lba, old_map) written
	afterFlog                        // whole flog entry written, map not
)

// interruptedWrite performs the first steps of a BTT write of one sector
// through lane 0, as writeSector does, and stops at stage.
func interruptedWrite(t *testing.T, d *Device, lba uint64, data []byte, stage writeStage) {
	t.Helper()
	a, premap := d.locate(lba)
	fe := a.free[0]
	off := int(fe.block) * int(a.internalLBASize)
	copy(a.dataArea[off:off+int(d.sector)], data)
	if stage == afterData {
		return
	}
	old, _, _ := a.lookup(premap)
	e := FlogEntry{LBA: premap, OldMap: old, NewMap: fe.block, Seq: fe.seq}
	lo, hi := e.halves()
	slot := 0*FlogGroupSize + a.logIndex[fe.sub]*FlogEntrySize
	storeWord64(a.flogArea, slot, lo)
	if stage == afterFlogFirst {
		return
	}
	storeWord64(a.flogArea, slot+8, hi)
}

func readSector(t *testing.T, d *Device, lba uint64) []byte {
	t.Helper()
	b := make([]byte, d.SectorSize())
	if err := d.ReadV(lba, [][]byte{b}); err != nil {
		t.Fatalf("read LBA %d: %v", lba, err)
	}
	return b
}

func TestOpenCompletesAWriteThatReachedTheFlogButNotTheMap(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	old, nu := pattern(4096, 9, 1), pattern(4096, 9, 2)
	if err := d.WriteV(9, [][]byte{old}); err != nil {
		t.Fatal(err)
	}
	interruptedWrite(t, d, 9, nu, afterFlog)
	if got := readSector(t, d, 9); !bytes.Equal(got, old) {
		t.Fatal("before recovery the map should still give the old data")
	}
	// Before recovery, check sees the pending move and still calls the BTT
	// consistent: it is what the kernel would finish on attach.
	rep, err := Check(m, CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemRecovery {
		t.Fatalf("check before recovery: %+v", rep.Problems)
	}
	d2, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d2.Recovered() != 1 {
		t.Errorf("recovered %d writes, want 1", d2.Recovered())
	}
	if got := readSector(t, d2, 9); !bytes.Equal(got, nu) {
		t.Fatal("after recovery LBA 9 does not hold the new data")
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent || len(rep.Problems) != 0 {
		t.Fatalf("check after recovery: %v %+v", err, rep.Problems)
	}
	// The lane's next write must not reuse the block recovery mapped.
	for i := 0; i < 3; i++ {
		if err := d2.WriteV(uint64(20+i), [][]byte{pattern(4096, uint64(20+i), 0)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := readSector(t, d2, 9); !bytes.Equal(got, nu) {
		t.Fatal("a later write clobbered the recovered sector")
	}
}

func TestTornFlogEntryKeepsTheOldData(t *testing.T) {
	for _, stage := range []writeStage{afterData, afterFlogFirst} {
		m, d := formatOpen(t, 32<<20, 512)
		old := pattern(512, 4, 1)
		if err := d.WriteV(4, [][]byte{old}); err != nil {
			t.Fatal(err)
		}
		interruptedWrite(t, d, 4, pattern(512, 4, 2), stage)
		d2, err := Open(m, Options{})
		if err != nil {
			t.Fatalf("stage %d: %v", stage, err)
		}
		if d2.Recovered() != 0 {
			t.Errorf("stage %d: recovered %d writes from an incomplete flog entry", stage, d2.Recovered())
		}
		if got := readSector(t, d2, 4); !bytes.Equal(got, old) {
			t.Errorf("stage %d: sector does not hold the old data", stage)
		}
		if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
			t.Fatalf("stage %d: check: %v %+v", stage, err, rep.Problems)
		}
	}
}

func TestReadOnlyOpenLeavesAPendingWriteAlone(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	interruptedWrite(t, d, 3, pattern(4096, 3, 1), afterFlog)
	before := bytes.Clone(m.buf)
	d2, err := Open(m, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if d2.Recovered() != 0 || !bytes.Equal(before, m.buf) {
		t.Fatal("a read-only open wrote the recovery")
	}
}

func TestCheckRepairCompletesAPendingWrite(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	interruptedWrite(t, d, 3, pattern(4096, 3, 1), afterFlog)
	rep, err := Check(m, CheckOptions{Repair: true})
	if err != nil || rep.Repaired != 1 || !rep.Consistent {
		t.Fatalf("repair: %v, %+v", err, rep)
	}
	d2, err := Open(m, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := readSector(t, d2, 3); !bytes.Equal(got, pattern(4096, 3, 1)) {
		t.Fatal("repaired write not visible")
	}
}

func damageInfo(t *testing.T, m *memMedium, off int64) {
	t.Helper()
	b, _ := m.Slice(off+200, 1)
	b[0] ^= 0xff
}

func TestDamagedInfoBlockFallsBackToInfo2(t *testing.T) {
	m, d := formatOpen(t, 40<<20, 4096)
	if err := d.WriteV(1, [][]byte{pattern(4096, 1, 1)}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	damageInfo(t, m, v11Offset)
	before := bytes.Clone(m.buf)
	d2, err := Open(m, Options{})
	if err != nil {
		t.Fatalf("open with a damaged info block: %v", err)
	}
	if got := d2.OpenedFromBackup(); len(got) != 1 || got[0] != 0 {
		t.Errorf("opened from backup: %v, want [0]", got)
	}
	if got := readSector(t, d2, 1); !bytes.Equal(got, pattern(4096, 1, 1)) {
		t.Error("data lost after info2 fallback")
	}
	d2.Close()
	if !bytes.Equal(before, m.buf) {
		t.Error("open wrote to the medium (it should leave the repair to check --repair)")
	}
	rep, err := Check(m, CheckOptions{})
	if err != nil || rep.Consistent || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemInfo || !rep.Problems[0].Repairable {
		t.Fatalf("check: %v %+v", err, rep)
	}
	rep, err = Check(m, CheckOptions{Repair: true})
	if err != nil || !rep.Consistent {
		t.Fatalf("check --repair: %v %+v", err, rep)
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || len(rep.Problems) != 0 {
		t.Fatalf("check after repair: %v %+v", err, rep.Problems)
	}
}

func TestDamagedInfo2IsReportedAndRepaired(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 512)
	damageInfo(t, m, d.arenaList()[0].info2Off)
	rep, err := Check(m, CheckOptions{})
	if err != nil || rep.Consistent || rep.Problems[0].Kind != ProblemInfo2 {
		t.Fatalf("check: %v %+v", err, rep)
	}
	if rep, err = Check(m, CheckOptions{Repair: true}); err != nil || !rep.Consistent {
		t.Fatalf("repair: %v %+v", err, rep)
	}
}

func TestBothInfoBlocksDamagedIsRefusedWithoutWriting(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 512)
	damageInfo(t, m, d.arenaList()[0].infoOff)
	damageInfo(t, m, d.arenaList()[0].info2Off)
	before := bytes.Clone(m.buf)
	if _, err := Open(m, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v, want ErrCorrupt", err)
	}
	if _, err := Check(m, CheckOptions{Repair: true}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("check: %v, want ErrCorrupt", err)
	}
	if !bytes.Equal(before, m.buf) {
		t.Fatal("the medium changed")
	}
}

func TestBlankMediumHasNoBTT(t *testing.T) {
	m := newMemMedium(32 << 20)
	if _, err := Open(m, Options{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open: %v, want ErrNotFound", err)
	}
}

func TestMapEntryPastTheArenaIsReportedAndReadFails(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	storeWord32(a.mapArea, 5*MapEntrySize, (a.internalNLBA+10)|mapNormal)
	rep, err := Check(m, CheckOptions{})
	if err != nil || rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep)
	}
	if rep.Problems[0].Kind != ProblemMap {
		t.Errorf("first problem %+v, want a map problem", rep.Problems[0])
	}
	if err := d.ReadV(5, [][]byte{make([]byte, 4096)}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("read: %v, want ErrCorrupt", err)
	}
	if err := d.WriteV(5, [][]byte{make([]byte, 4096)}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("write: %v, want ErrCorrupt", err)
	}
}

func TestDuplicatePostmapBlockIsReported(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	storeWord32(a.mapArea, 5*MapEntrySize, 6|mapNormal) // LBA 5 -> block 6, which LBA 6 owns
	rep, err := Check(m, CheckOptions{})
	if err != nil || rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep)
	}
	var dup, lost bool
	for _, p := range rep.Problems {
		dup = dup || (p.Kind == ProblemBlocks && bytes.Contains([]byte(p.Message), []byte("already uses")))
		lost = lost || (p.Kind == ProblemBlocks && bytes.Contains([]byte(p.Message), []byte("lost")))
	}
	if !dup || !lost {
		t.Errorf("want a duplicate and a lost block reported, got %+v", rep.Problems)
	}
}

func TestFlogWithImpossibleSequenceNumbersIsRefused(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	// Lane 3: both slots claim sequence 2.
	e := FlogEntry{LBA: 3, OldMap: a.externalNLBA + 3, NewMap: a.externalNLBA + 3, Seq: 2}
	e.encode(a.flogArea[3*FlogGroupSize:])
	e.encode(a.flogArea[3*FlogGroupSize+FlogEntrySize:])
	before := bytes.Clone(m.buf)
	if _, err := Open(m, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v, want ErrCorrupt", err)
	}
	rep, err := Check(m, CheckOptions{Repair: true})
	if err != nil || rep.Consistent || rep.Problems[0].Kind != ProblemFlog {
		t.Fatalf("check: %v %+v", err, rep)
	}
	if !bytes.Equal(before, m.buf) {
		t.Fatal("the medium changed")
	}
}

// Kernels before 4.15 kept a lane's two flog entries in slots 0 and 2.
func TestPre415FlogLayoutIsDetectedAndKept(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	// What an old kernel leaves after one write of LBA 0 through lane 0:
	// slot 2 holds {lba 0, old = free block, new... } — here: LBA 0 moved
	// from its identity block 0 to the lane's free block.
	free := a.externalNLBA
	copy(a.dataArea[int(free)*4096:], pattern(4096, 0, 7))
	FlogEntry{LBA: 0, OldMap: 0, NewMap: free, Seq: 2}.encode(a.flogArea[2*FlogEntrySize:])
	storeWord32(a.mapArea, 0, free|mapNormal)
	d2, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := d2.arenaList()[0].logIndex; got != [2]int{0, 2} {
		t.Fatalf("log index %v, want [0 2]", got)
	}
	if got := readSector(t, d2, 0); !bytes.Equal(got, pattern(4096, 0, 7)) {
		t.Fatal("LBA 0 does not read the old kernel's write")
	}
	for i := 0; i < 600; i++ { // cycle every lane a few times
		lba := uint64(i % 40)
		if err := d2.WriteV(lba, [][]byte{pattern(4096, lba, i)}); err != nil {
			t.Fatal(err)
		}
	}
	for lane := 0; lane < int(a.nfree); lane++ {
		g := d2.arenaList()[0].flogGroup(lane)
		if !g[1].isPadding() || !g[3].isPadding() {
			t.Fatalf("lane %d: wrote into a padding slot of the old layout: %+v", lane, g)
		}
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep.Problems)
	}
}

func TestFreshFormatUsesTheCurrentFlogLayout(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 512)
	a := d.arenaList()[0]
	if a.logIndex != [2]int{0, 1} {
		t.Fatalf("log index %v", a.logIndex)
	}
	for lane := 0; lane < int(a.nfree); lane++ {
		g := a.flogGroup(lane)
		want := FlogEntry{LBA: uint32(lane), OldMap: a.externalNLBA + uint32(lane), NewMap: a.externalNLBA + uint32(lane), Seq: 1}
		if g[0] != want || !g[1].isPadding() || !g[2].isPadding() || !g[3].isPadding() {
			t.Fatalf("lane %d group %+v, want slot 0 = %+v and zeroes", lane, g, want)
		}
	}
}

func TestVersion20StartsAtOffsetZero(t *testing.T) {
	m := newMemMedium(32 << 20)
	if err := Format(m, FormatOptions{LBASize: 512, Version: Version20}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.buf[:16], Signature[:]) {
		t.Fatal("no info block at 0")
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Version() != Version20 {
		t.Errorf("version %s", d.Version())
	}
}
