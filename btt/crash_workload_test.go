package btt_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/crashmedium"
)

// The smallest medium a BTT fits on: one 16 MiB arena after the 4 KiB a
// version 1.1 BTT leaves free at the start.
const crashMediumSize = 16<<20 + 4096

var _ btt.Medium = (*crashmedium.Medium)(nil)
var _ btt.Medium = (*crashmedium.Image)(nil)

type opKind int

const (
	opWrite opKind = iota
	opZero
	opFlush
)

// crashOp is one operation of a recorded workload. start is the number of
// barriers recorded when it was issued and end when it returned: a crash at
// point k finds it acknowledged if end <= k and in flight if start <= k < end.
type crashOp struct {
	id         int
	kind       opKind
	lba, n     uint64
	start, end int
}

func (o crashOp) String() string {
	switch o.kind {
	case opWrite:
		return fmt.Sprintf("op %d write LBA %d+%d [barriers %d..%d)", o.id, o.lba, o.n, o.start, o.end)
	case opZero:
		return fmt.Sprintf("op %d write-zeroes LBA %d+%d [barriers %d..%d)", o.id, o.lba, o.n, o.start, o.end)
	}
	return fmt.Sprintf("op %d flush [barriers %d..%d)", o.id, o.start, o.end)
}

func (o crashOp) touches(lba uint64) bool {
	return o.kind != opFlush && lba >= o.lba && lba < o.lba+o.n
}

// sectorContent is what op id writes to lba: a tag naming the write, then
// bytes no other write produces, so a sector read back names its writer
// and a mix of two writes matches neither.
func sectorContent(size uint32, id int, lba uint64) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint64(b, uint64(id)+1)
	binary.LittleEndian.PutUint64(b[8:], lba)
	r := rand.New(rand.NewPCG(uint64(id), lba))
	for i := 16; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// history is the reference model: every operation the workload issued, in
// issue order (per LBA, also completion order: operations on one LBA never
// overlap in these workloads).
type history struct {
	sector  uint32
	ops     []*crashOp
	touched map[uint64]bool
	written map[[2]uint64][]byte // sectorContent by (op id, lba), made once
}

func newHistory(sector uint32) *history {
	return &history{sector: sector, touched: map[uint64]bool{}, written: map[[2]uint64][]byte{}}
}

func (h *history) begin(kind opKind, lba, n uint64, barriers int) *crashOp {
	o := &crashOp{id: len(h.ops), kind: kind, lba: lba, n: n, start: barriers, end: -1}
	h.ops = append(h.ops, o)
	for i := uint64(0); i < n && kind != opFlush; i++ {
		h.touched[lba+i] = true
	}
	return o
}

func (h *history) contentOf(o *crashOp, lba uint64) []byte {
	if o == nil || o.kind == opZero {
		return make([]byte, h.sector)
	}
	key := [2]uint64{uint64(o.id), lba}
	b, ok := h.written[key]
	if !ok {
		b = sectorContent(h.sector, o.id, lba)
		h.written[key] = b
	}
	return b
}

// allowed is what lba may hold after a crash at point k: the content of the
// last operation acknowledged before k (zeroes if none), or that of an
// operation in flight at k. Nothing older, and no mix.
func (h *history) allowed(lba uint64, k int) (acked *crashOp, inflight []*crashOp) {
	for _, o := range h.ops {
		if !o.touches(lba) {
			continue
		}
		switch {
		case o.end >= 0 && o.end <= k:
			acked = o
		case o.start <= k:
			inflight = append(inflight, o)
		}
	}
	return acked, inflight
}

func (h *history) lbas() []uint64 {
	out := make([]uint64, 0, len(h.touched))
	for lba := range h.touched {
		out = append(out, lba)
	}
	slices.Sort(out)
	return out
}

// describe names the write a sector's content came from, for messages.
func (h *history) describe(b []byte) string {
	if bytes.Equal(b, make([]byte, len(b))) {
		return "zeroes"
	}
	id := binary.LittleEndian.Uint64(b) - 1
	lba := binary.LittleEndian.Uint64(b[8:])
	if id < uint64(len(h.ops)) && bytes.Equal(b, sectorContent(h.sector, int(id), lba)) {
		return fmt.Sprintf("the data of %v for LBA %d", h.ops[id], lba)
	}
	return fmt.Sprintf("no write's data (torn or foreign; tag op %d LBA %d)", int64(id), lba)
}

// checkSectors reads every LBA the workload touched and holds it to the
// model at point k.
func (h *history) checkSectors(d *btt.Device, k int) error {
	buf := make([]byte, h.sector)
	for _, lba := range h.lbas() {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil {
			return fmt.Errorf("read LBA %d: %w", lba, err)
		}
		acked, inflight := h.allowed(lba, k)
		if bytes.Equal(buf, h.contentOf(acked, lba)) {
			continue
		}
		ok := false
		for _, o := range inflight {
			ok = ok || bytes.Equal(buf, h.contentOf(o, lba))
		}
		if !ok {
			want := "initial zeroes"
			if acked != nil {
				want = acked.String()
			}
			return fmt.Errorf("LBA %d holds %s; want the last acknowledged (%s) or one of %d in flight %v",
				lba, h.describe(buf), want, len(inflight), inflight)
		}
	}
	return nil
}

// verifyCrashImage is what a crash at point k must leave: a BTT that check
// finds consistent but for writes the flog holds and the map misses, that
// opens (finishing those writes), whose every sector is old-or-new, and that
// check then finds wholly consistent. It returns how many writes Open
// recovered.
func verifyCrashImage(h *history, k int, m btt.Medium) (int, error) {
	rep, err := btt.Check(m, btt.CheckOptions{})
	if err != nil {
		return 0, fmt.Errorf("check before open: %w", err)
	}
	for _, p := range rep.Problems {
		if p.Kind != btt.ProblemRecovery {
			return 0, fmt.Errorf("check before open: %s problem in arena %d: %s", p.Kind, p.Arena, p.Message)
		}
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		return 0, fmt.Errorf("open: %w", err)
	}
	if d.Recovered() != len(rep.Problems) {
		return 0, fmt.Errorf("open recovered %d writes, check reported %d pending", d.Recovered(), len(rep.Problems))
	}
	if err := h.checkSectors(d, k); err != nil {
		return 0, err
	}
	if err := d.Close(); err != nil {
		return 0, fmt.Errorf("close: %w", err)
	}
	rep, err = btt.Check(m, btt.CheckOptions{})
	if err != nil {
		return 0, fmt.Errorf("check after open: %w", err)
	}
	if !rep.Consistent || len(rep.Problems) != 0 {
		return 0, fmt.Errorf("check after open: consistent=%v, problems %+v", rep.Consistent, rep.Problems)
	}
	return d.Recovered(), nil
}

// workload describes one seeded random run.
type workload struct {
	lbaSize uint32
	seed    uint64
	setup   int // unrecorded writes first, so lanes wrap and blocks scatter
	ops     int // recorded operations
}

func (w workload) String() string {
	return fmt.Sprintf("lbasize %d seed %d", w.lbaSize, w.seed)
}

// recording is a workload that ran on the fault-injecting medium.
type recording struct {
	w      workload
	m      *crashmedium.Medium
	h      *history
	nlba   uint64
	sector uint32
}

// startRecording formats a medium, runs the unrecorded setup on it, and
// returns the crash medium holding that state as point 0 and the device on
// it.
func startRecording(t *testing.T, w workload) (*recording, *btt.Device) {
	t.Helper()
	plain := crashmedium.NewImage(make([]byte, crashMediumSize))
	if err := btt.Format(plain, btt.FormatOptions{LBASize: w.lbaSize}); err != nil {
		t.Fatalf("%v: format: %v", w, err)
	}
	rec := runSetup(t, w, plain)
	var err error
	var d *btt.Device
	if rec.m, err = crashmedium.NewFrom(plain.Bytes()); err != nil {
		t.Fatal(err)
	}
	// A reopened device starts its lanes over; the flog carries on where
	// the setup left each lane.
	if d, err = btt.Open(rec.m, btt.Options{}); err != nil {
		t.Fatalf("%v: reopen: %v", w, err)
	}
	return rec, d
}

// runSetup runs a workload's unrecorded setup writes on a formatted
// medium, closes the device, and returns the history holding them.
func runSetup(t *testing.T, w workload, plain btt.Medium) *recording {
	t.Helper()
	d, err := btt.Open(plain, btt.Options{})
	if err != nil {
		t.Fatalf("%v: open: %v", w, err)
	}
	rec := &recording{w: w, h: newHistory(d.SectorSize()), nlba: d.NumSectors(), sector: d.SectorSize()}
	rng := rand.New(rand.NewPCG(w.seed, 1))
	for i := 0; i < w.setup; i++ {
		lba := rec.hotLBA(rng)
		if i%3 == 0 {
			lba = rng.Uint64N(rec.nlba)
		}
		if err := rec.issue(d, opWrite, lba, 1, 0); err != nil {
			t.Fatalf("%v: setup: %v", w, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return rec
}

// hotLBA draws from a handful of LBAs so writes overlap: two that share an
// 8-byte map word, two on either side of a map cache line, and the last.
func (rec *recording) hotLBA(rng *rand.Rand) uint64 {
	hot := []uint64{0, 1, 5, 15, 16, rec.nlba - 1}
	return hot[rng.IntN(len(hot))]
}

// issue runs one operation through d and records it in the model.
func (rec *recording) issue(d *btt.Device, kind opKind, lba, n uint64, barriers int) error {
	o := rec.h.begin(kind, lba, n, barriers)
	var err error
	switch kind {
	case opWrite:
		data := make([]byte, 0, n*uint64(rec.sector))
		for i := uint64(0); i < n; i++ {
			data = append(data, rec.h.contentOf(o, lba+i)...)
		}
		// Split the vector off a sector boundary, as guest buffers are.
		cut := min(len(data), 100+o.id%7*64)
		err = d.WriteV(lba, [][]byte{data[:cut], data[cut:]})
	case opZero:
		err = d.WriteZeroes(lba, n)
	case opFlush:
		err = d.Flush()
	}
	if rec.m != nil {
		o.end = rec.m.Barriers()
	} else {
		o.end = barriers
	}
	if err != nil {
		return fmt.Errorf("%v: %w", o, err)
	}
	return nil
}

// randomOp draws the next operation: mostly 1-3 sector writes and
// write-zeroes on the hot LBAs, some cold writes, some flushes.
func (rec *recording) randomOp(rng *rand.Rand) (opKind, uint64, uint64) {
	n := 1 + rng.Uint64N(3)
	lba := rec.hotLBA(rng)
	switch x := rng.IntN(20); {
	case x < 11:
		return opWrite, lba, min(n, rec.nlba-lba)
	case x < 15:
		return opZero, lba, min(n, rec.nlba-lba)
	case x < 18:
		return opWrite, rng.Uint64N(rec.nlba), 1
	default:
		return opFlush, 0, 0
	}
}

// recordSequential runs a seeded workload one operation at a time.
func recordSequential(t *testing.T, w workload) *recording {
	t.Helper()
	rec, d := startRecording(t, w)
	rng := rand.New(rand.NewPCG(w.seed, 2))
	for i := 0; i < w.ops; i++ {
		kind, lba, n := rec.randomOp(rng)
		if err := rec.issue(d, kind, lba, n, rec.m.Barriers()); err != nil {
			t.Fatalf("%v: %v", w, err)
		}
	}
	return rec
}

// subsets are the crash images explored at one point: every subset of the
// pending words when there are at most three (a flog half or a map entry is
// one word, so its barrier is covered exhaustively), else none, all, a
// front-to-back prefix and two random halves.
func subsets(pending []crashmedium.Word, seed uint64) (names []string, keeps []crashmedium.Subset) {
	if len(pending) <= 3 {
		for bits := uint64(0); bits < 1<<len(pending); bits++ {
			names = append(names, fmt.Sprintf("mask %0*b", max(1, len(pending)), bits))
			keeps = append(keeps, crashmedium.Mask(bits))
		}
		return names, keeps
	}
	names = []string{"none", "all", "first half", "random A", "random B"}
	keeps = []crashmedium.Subset{crashmedium.None, crashmedium.All, crashmedium.FirstN(len(pending) / 2),
		crashmedium.Random(seed, 0.5), crashmedium.Random(seed+1, 0.9)}
	return names, keeps
}

// explored counts what a crash exploration covered.
type explored struct {
	points, images, recovered int
}

// explore crashes the recording at every point with every subset and hands
// each image to visit.
func (rec *recording) explore(t *testing.T, visit func(k int, subset string, img *crashmedium.Image) error) explored {
	t.Helper()
	var e explored
	r := rec.m.Replay()
	for ; !r.Done(); e.points++ {
		k := r.Point()
		names, keeps := subsets(rec.m.Pending(k), rec.w.seed<<20|uint64(k))
		for i, keep := range keeps {
			img, err := r.Image(keep)
			if err != nil {
				t.Fatal(err)
			}
			e.images++
			if err := visit(k, names[i], img); err != nil {
				t.Fatalf("%v: crash at point %d of %d, pending words kept: %s (%d): %v\nreproduce with this seed; operations around the point:\n%s",
					rec.w, k, rec.m.Barriers(), names[i], len(img.Kept()), err, rec.around(k))
			}
		}
		if err := r.Advance(); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// around lists the operations near point k, for failure messages.
func (rec *recording) around(k int) string {
	var s string
	for _, o := range rec.h.ops {
		if o.end >= k-8 && o.start <= k+8 && o.end != o.start || o.start <= k && k < o.end {
			s += "  " + o.String() + "\n"
		}
	}
	return s
}

func (rec *recording) verifyAll(t *testing.T) explored {
	t.Helper()
	var recovered int
	e := rec.explore(t, func(k int, _ string, img *crashmedium.Image) error {
		n, err := verifyCrashImage(rec.h, k, img)
		recovered += n
		return err
	})
	e.recovered = recovered
	t.Logf("%v: %d operations, %d barriers, %d crash points, %d crash images, %d with a write recovered from the flog",
		rec.w, len(rec.h.ops), rec.m.Barriers(), e.points, e.images, e.recovered)
	return e
}

func TestCrashAtEveryBarrierOf512ByteSectorWritesLeavesEachSectorOldOrNew(t *testing.T) {
	rec := recordSequential(t, workload{lbaSize: 512, seed: 512, setup: 300, ops: 30})
	rec.verifyAll(t)
}

func TestCrashAtEveryBarrierOf4096ByteSectorWritesLeavesEachSectorOldOrNew(t *testing.T) {
	for _, seed := range []uint64{4096, 4097} {
		rec := recordSequential(t, workload{lbaSize: 4096, seed: seed, setup: 300, ops: 30})
		rec.verifyAll(t)
	}
}

func TestCrashAtEveryBarrierOf520ByteSectorsWithProtectionBytesLeavesEachSectorOldOrNew(t *testing.T) {
	rec := recordSequential(t, workload{lbaSize: 520, seed: 520, setup: 300, ops: 25})
	rec.verifyAll(t)
}

// The process-crash model keeps every retired store: the image is the
// working buffer at the crash. It is the durability promise of the
// flush-durable mode, so it must hold at every point too.
func TestProcessCrashAtEveryBarrierLeavesEachSectorOldOrNew(t *testing.T) {
	rec := recordSequential(t, workload{lbaSize: 4096, seed: 77, setup: 300, ops: 30})
	r := rec.m.Replay()
	points := 0
	for ; !r.Done(); points++ {
		img, err := r.Image(crashmedium.All)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verifyCrashImage(rec.h, r.Point(), img); err != nil {
			t.Fatalf("%v: process crash at point %d: %v\n%s", rec.w, r.Point(), err, rec.around(r.Point()))
		}
		if err := r.Advance(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%v: %d process-crash points", rec.w, points)
}

func TestCrashImageOfAnUntouchedDeviceOpensWithoutRecovery(t *testing.T) {
	rec, _ := startRecording(t, workload{lbaSize: 4096, seed: 1, setup: 10})
	img, err := rec.m.CrashImage(0, crashmedium.None)
	if err != nil {
		t.Fatal(err)
	}
	n, err := verifyCrashImage(rec.h, 0, crashmedium.NewImage(img))
	if err != nil || n != 0 {
		t.Fatalf("recovered %d, %v", n, err)
	}
	if _, err := btt.Open(crashmedium.NewImage(make([]byte, crashMediumSize)), btt.Options{}); !errors.Is(err, btt.ErrNotFound) {
		t.Fatalf("blank image: %v, want ErrNotFound", err)
	}
}
