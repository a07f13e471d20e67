package btt_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/crashmedium"
)

// The tests here hold the BTT to what a power loss may do to an image in
// pmem's flush mode, where the page cache writes dirty pages back in any
// order between two flushes: after the crash, a sector not written since
// the last completed FLUSH reads what it held then; any other sector reads
// one version that was written to it, never another LBA's data; the image
// is consistent; and writes on the reopened image keep all of that true.

var (
	_ btt.ProcessLogMedium = (*crashmedium.Writeback)(nil)
	_ btt.ProcessLogMedium = (*crashmedium.WritebackImage)(nil)
)

// wbRecording is a workload run on a page-cache medium.
type wbRecording struct {
	w      workload
	nfree  uint32
	m      *crashmedium.Writeback
	h      *history
	setup  int // ops[:setup] ran before recording, and were flushed
	nlba   uint64
	sector uint32
}

// recordWriteback formats an image, runs the setup on it and closes it
// (durable), then reopens it on a page-cache medium and runs the recorded
// operations one at a time, marking a point after each.
func recordWriteback(t *testing.T, w workload, nfree uint32) *wbRecording {
	t.Helper()
	plain := crashmedium.NewImage(make([]byte, crashMediumSize))
	if err := btt.Format(plain, btt.FormatOptions{LBASize: w.lbaSize, NFree: nfree}); err != nil {
		t.Fatalf("%v: format: %v", w, err)
	}
	rec := runSetup(t, w, plain)
	var err error
	var d *btt.Device
	wb := &wbRecording{w: w, nfree: nfree, h: rec.h, setup: len(rec.h.ops), nlba: rec.nlba, sector: rec.sector}
	if wb.m, err = crashmedium.NewWritebackFrom(plain.Bytes(), nil); err != nil {
		t.Fatal(err)
	}
	if d, err = btt.Open(wb.m, btt.Options{}); err != nil {
		t.Fatalf("%v: reopen: %v", w, err)
	}
	rng := rand.New(rand.NewPCG(w.seed, 2))
	for i := 0; i < w.ops; i++ {
		kind, lba, n := rec.randomOp(rng)
		o := wb.h.begin(kind, lba, n, wb.m.Points())
		if err := wb.run(d, o); err != nil {
			t.Fatalf("%v: %v: %v", w, o, err)
		}
		wb.m.Mark()
		o.end = wb.m.Points()
	}
	t.Logf("%v nfree %d: %d operations, %d points, %d commits", w, nfree, w.ops, wb.m.Points(), d.Commits())
	return wb
}

func (wb *wbRecording) run(d *btt.Device, o *crashOp) error {
	switch o.kind {
	case opWrite:
		data := make([]byte, 0, o.n*uint64(wb.sector))
		for i := uint64(0); i < o.n; i++ {
			data = append(data, wb.h.contentOf(o, o.lba+i)...)
		}
		cut := min(len(data), 100+o.id%7*64)
		return d.WriteV(o.lba, [][]byte{data[:cut], data[cut:]})
	case opZero:
		return d.WriteZeroes(o.lba, o.n)
	}
	return d.Flush()
}

// lastFlush splits the operations at the last FLUSH completed by point k
// (or at the end of the setup, which Close flushed): those before index
// before came ahead of it, those from index after on since.
func (wb *wbRecording) lastFlush(k int) (before, after int) {
	before, after = wb.setup, wb.setup
	for _, o := range wb.h.ops[wb.setup:] {
		if o.kind == opFlush && o.end <= k {
			before, after = o.id, o.id+1
		}
	}
	return before, after
}

// powerLossAllows lists what lba may hold after a power loss at point k:
// what it held at the last completed FLUSH, or what any write to it since
// (begun by k) put there.
func (wb *wbRecording) powerLossAllows(lba uint64, k int) (atFlush *crashOp, since []*crashOp) {
	before, after := wb.lastFlush(k)
	for _, o := range wb.h.ops {
		switch {
		case !o.touches(lba):
		case o.id < before:
			atFlush = o
		case o.id >= after && o.start <= k:
			since = append(since, o)
		}
	}
	return atFlush, since
}

// checkPowerLoss reads every touched LBA and holds it to powerLossAllows;
// it returns what each LBA read, for the writes that follow.
func (wb *wbRecording) checkPowerLoss(d *btt.Device, k int) (map[uint64][]byte, error) {
	got := map[uint64][]byte{}
	for _, lba := range wb.h.lbas() {
		buf := make([]byte, wb.sector)
		if err := d.ReadV(lba, [][]byte{buf}); err != nil {
			return nil, fmt.Errorf("read LBA %d: %w", lba, err)
		}
		got[lba] = buf
		atFlush, since := wb.powerLossAllows(lba, k)
		if bytes.Equal(buf, wb.h.contentOf(atFlush, lba)) {
			continue
		}
		ok := false
		for _, o := range since {
			ok = ok || bytes.Equal(buf, wb.h.contentOf(o, lba))
		}
		if !ok {
			return nil, fmt.Errorf("LBA %d holds %s; want what it held at the last flush (%v) or one of the %d writes since %v",
				lba, wb.h.describe(buf), atFlush, len(since), since)
		}
	}
	return got, nil
}

// checkConsistent is Check finding nothing but writes the flog holds and the
// map misses (recovery's to finish), or with after, nothing at all.
func checkConsistent(m btt.Medium, after bool) error {
	rep, err := btt.Check(m, btt.CheckOptions{})
	if err != nil {
		return err
	}
	for _, p := range rep.Problems {
		if after || p.Kind != btt.ProblemRecovery {
			return fmt.Errorf("%s problem in arena %d: %s", p.Kind, p.Arena, p.Message)
		}
	}
	if after && !rep.Consistent {
		return fmt.Errorf("not consistent, no problem named")
	}
	return nil
}

// carryOn writes every touched LBA once more (in a shuffled order, through
// the reopened device's lanes, forcing commits where its lanes run out) and
// flushes, then checks that each LBA reads its new data; then half of them
// again without a flush, and checks those read new, the others unchanged.
// A device that reopened with a block owned twice overwrites one LBA with
// another's data here.
func (wb *wbRecording) carryOn(d *btt.Device, before map[uint64][]byte, seed uint64) error {
	lbas := wb.h.lbas()
	rng := rand.New(rand.NewPCG(seed, 3))
	rng.Shuffle(len(lbas), func(i, j int) { lbas[i], lbas[j] = lbas[j], lbas[i] })
	want := map[uint64][]byte{}
	for round, n := range []int{len(lbas), len(lbas) / 2} {
		for i, lba := range lbas[:n] {
			b := sectorContent(wb.sector, 1<<20+round<<16+i, lba)
			if err := d.WriteV(lba, [][]byte{b}); err != nil {
				return fmt.Errorf("write LBA %d after reopen: %w", lba, err)
			}
			want[lba] = b
		}
		if round == 0 {
			if err := d.Flush(); err != nil {
				return fmt.Errorf("flush after reopen: %w", err)
			}
		}
	}
	buf := make([]byte, wb.sector)
	for lba, b := range want {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil {
			return err
		}
		if !bytes.Equal(buf, b) {
			return fmt.Errorf("after reopen, LBA %d written and read back holds %s, not its own data (before: %s)",
				lba, wb.h.describe(buf), wb.h.describe(before[lba]))
		}
	}
	return nil
}

// verifyPowerLoss opens one power-loss image and holds it to every promise.
func (wb *wbRecording) verifyPowerLoss(img []byte, k int) error {
	if err := checkConsistent(crashmedium.NewImage(img), false); err != nil {
		return fmt.Errorf("check before open: %w", err)
	}
	m := crashmedium.NewWritebackImage(img, nil)
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	got, err := wb.checkPowerLoss(d, k)
	if err != nil {
		return err
	}
	if err := wb.carryOn(d, got, uint64(k)); err != nil {
		return err
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	if err := checkConsistent(m, true); err != nil {
		return fmt.Errorf("check after the writes that followed: %w", err)
	}
	return nil
}

// explorePowerLoss crashes the recording at every point with several
// choices of page versions: only what the last flush left, every page as
// it stood at the crash, and four random mixes of durable and any version.
func (wb *wbRecording) explorePowerLoss(t *testing.T) (points, images int) {
	t.Helper()
	names := []string{"durable only", "newest", "random A", "random B", "random C", "random D"}
	scratch := make([]byte, crashMediumSize)
	r := wb.m.Replay()
	for ; !r.Done(); r.Advance() {
		k := r.Point()
		if !fullCrashExploration && k%3 != 0 {
			continue
		}
		points++
		for i, name := range names {
			if !fullCrashExploration && i != 0 && i != 1+k%(len(names)-1) {
				continue // durable only, and one other in turn
			}
			choose := crashmedium.Durable
			switch {
			case i == 1:
				choose = crashmedium.Newest
			case i > 1:
				choose = crashmedium.AnyVersion(wb.w.seed<<24 | uint64(k)<<4 | uint64(i))
			}
			img, kept := r.Image(choose)
			copy(scratch, img)
			images++
			if err := wb.verifyPowerLoss(scratch, k); err != nil {
				t.Fatalf("%v nfree %d: power loss at point %d of %d (flush: %v), page versions %s (%d pages kept): %v\noperations around it:\n%s",
					wb.w, wb.nfree, k, wb.m.Points(), wb.m.IsFlush(k), name, kept, err, wb.around(k))
			}
		}
	}
	return points, images
}

func (wb *wbRecording) around(k int) string {
	var s string
	for _, o := range wb.h.ops[wb.setup:] {
		if o.end >= k-6 && o.start <= k+6 {
			s += "  " + o.String() + "\n"
		}
	}
	return s
}

func TestPowerLossInFlushModeAtEveryPointOf512ByteSectorWritesLosesNothingFlushed(t *testing.T) {
	for _, nfree := range []uint32{4, btt.DefaultNFree} {
		wb := recordWriteback(t, workload{lbaSize: 512, seed: 5120 + uint64(nfree), setup: 200, ops: 30}, nfree)
		points, images := wb.explorePowerLoss(t)
		t.Logf("nfree %d: %d crash points, %d power-loss images", nfree, points, images)
	}
}

func TestPowerLossInFlushModeAtEveryPointOf4096ByteSectorWritesLosesNothingFlushed(t *testing.T) {
	for _, nfree := range []uint32{3, btt.DefaultNFree} {
		wb := recordWriteback(t, workload{lbaSize: 4096, seed: 40960 + uint64(nfree), setup: 200, ops: 30}, nfree)
		points, images := wb.explorePowerLoss(t)
		t.Logf("nfree %d: %d crash points, %d power-loss images", nfree, points, images)
	}
}

// A kill -9 in flush mode keeps every store and the pending log: the
// reopened device must find every completed write, flushed or not.
func TestProcessCrashInFlushModeAtEveryPointKeepsEveryCompletedWrite(t *testing.T) {
	for _, nfree := range []uint32{4, btt.DefaultNFree} {
		wb := recordWriteback(t, workload{lbaSize: 4096, seed: 9090 + uint64(nfree), setup: 200, ops: 30}, nfree)
		scratch := make([]byte, crashMediumSize)
		r := wb.m.Replay()
		points, replayed := 0, 0
		for ; !r.Done(); r.Advance() {
			k := r.Point()
			img, _ := r.Image(crashmedium.Newest)
			copy(scratch, img)
			m := crashmedium.NewWritebackImage(scratch, r.Log())
			n, err := verifyProcessCrash(wb.h, k, m)
			if err != nil {
				t.Fatalf("nfree %d: process crash at point %d of %d: %v\n%s", nfree, k, wb.m.Points(), err, wb.around(k))
			}
			points++
			replayed += n
		}
		if replayed == 0 {
			t.Fatalf("nfree %d: no crash point found a write in the pending log: the test proves nothing", nfree)
		}
		t.Logf("nfree %d: %d process-crash points, %d writes replayed from pending logs", nfree, points, replayed)
	}
}

// verifyProcessCrash opens a process-crash image with its pending log and
// holds every sector to old-or-new with every acknowledged write kept.
func verifyProcessCrash(h *history, k int, m *crashmedium.WritebackImage) (int, error) {
	if err := checkConsistent(m, false); err != nil {
		return 0, fmt.Errorf("check before open: %w", err)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		return 0, fmt.Errorf("open: %w", err)
	}
	if err := h.checkSectors(d, k); err != nil {
		return 0, err
	}
	if err := d.Close(); err != nil {
		return 0, fmt.Errorf("close: %w", err)
	}
	if m.Log() != nil {
		return 0, fmt.Errorf("the pending log is still there after a clean close")
	}
	if err := checkConsistent(m, true); err != nil {
		return 0, fmt.Errorf("check after close: %w", err)
	}
	return d.Replayed(), nil
}

// The reproduction that started this: the state of the last FLUSH plus
// only the map pages written since (as the page cache may write them back
// first). On the kernel's write order Open found nothing to recover, check
// found an LBA mapping a block a free list also held, and a write after the
// reboot overwrote another LBA's data.
func TestPowerLossKeepingOnlyTheMapPagesWrittenSinceTheFlushLosesNoLBAsData(t *testing.T) {
	plain := crashmedium.NewImage(make([]byte, crashMediumSize))
	if err := btt.Format(plain, btt.FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	m, err := crashmedium.NewWritebackFrom(plain.Bytes(), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	write := func(d *btt.Device, lba uint64, gen int) {
		t.Helper()
		if err := d.WriteV(lba, [][]byte{sectorContent(4096, gen, lba)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, lba := range []uint64{10, 11, 20, 30} {
		write(d, lba, 1)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, lba := range []uint64{11, 10, 30, 11, 20, 10} {
		write(d, lba, 2)
	}
	m.Mark()
	ai := d.Arenas()[0]
	mapPages := func(page, n int) int {
		if off := int64(page) * 4096; off+4096 > ai.MapOff && off < ai.LogOff {
			return n - 1
		}
		return -1
	}
	r := m.Replay()
	for r.Point() < m.Points()-1 {
		r.Advance()
	}
	img, _ := r.Image(mapPages)
	after := crashmedium.NewWritebackImage(append([]byte(nil), img...), nil)
	if err := checkConsistent(after, false); err != nil {
		t.Fatalf("check after the power loss: %v", err)
	}
	d, err = btt.Open(after, btt.Options{})
	if err != nil {
		t.Fatalf("open after the power loss: %v", err)
	}
	buf := make([]byte, 4096)
	for _, lba := range []uint64{10, 11, 20, 30} {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, sectorContent(4096, 1, lba)) && !bytes.Equal(buf, sectorContent(4096, 2, lba)) {
			t.Fatalf("LBA %d after the power loss holds another write's data", lba)
		}
	}
	write(d, 20, 3)
	write(d, 30, 3)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	for lba, gen := range map[uint64]int{20: 3, 30: 3} {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil || !bytes.Equal(buf, sectorContent(4096, gen, lba)) {
			t.Fatalf("LBA %d written and flushed after the reboot does not read back (%v)", lba, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := checkConsistent(after, true); err != nil {
		t.Fatal(err)
	}
}
