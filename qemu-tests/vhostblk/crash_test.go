package vhostblk

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// QEMU is killed (SIGKILL) while its guest rewrites a range again and
// again: nvblk notices the front-end is gone, the next guest is served on
// the same socket, and every sector of the range holds one whole
// generation, none older than the last one the first guest had flushed —
// the BTT's promise of atomic sectors, end to end.
func TestQEMUKilledMidWriteLeavesEverySectorWholeAndNvblkServesTheNextGuest(t *testing.T) {
	img := suite.FormatImage(t, "64M", 4096)
	srv := serve(t, img, "--num-queues", "2")
	const (
		first       = 256
		count       = 1024 // 4 MiB, rewritten by every generation
		generations = 40
		killAfter   = 3 // generations flushed before the kill
	)
	gen := func(g int) string { return fmt.Sprintf("generation-%d", g) }
	steps := []agentproto.Step{{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000}}
	for g := 0; g < generations; g++ {
		// parallel-write flushes when its writers are done.
		steps = append(steps, agentproto.Step{Op: agentproto.OpParallel, Device: dev, SectorSize: img.SectorSize,
			LBA: first, Count: count, Chunk: 8, Workers: 2, Seed: gen(g)})
	}
	m := guest.Start(t, suite.Kit, machineConfig(srv, 1, 2, steps))
	rep, err := m.WaitStep(1+killAfter, guest.DefaultTimeout)
	if err != nil || !rep.OK {
		t.Fatalf("generation %d: %+v %v", killAfter, rep, err)
	}
	t.Logf("one generation (%d sectors) takes the guest %d ms", count, rep.MS)
	// Half a generation later the writers are mid-range.
	time.Sleep(time.Duration(rep.MS/2) * time.Millisecond)
	m.Kill()
	checkConsole(t, m)
	flushed := -1
	for _, r := range m.Reports() {
		if r.Op == agentproto.OpParallel && r.OK {
			flushed = r.Step - 1
		}
	}
	t.Logf("QEMU killed with generation %d flushed", flushed)
	if flushed >= generations-1 {
		t.Fatalf("the guest finished all %d generations before the kill: nothing was in flight", generations)
	}

	// The next guest, on the same socket, must be served and see whole
	// sectors; it writes a range of its own.
	next := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpWriteSectors, Device: dev, SectorSize: img.SectorSize, LBA: 0, Count: 16, Seed: "next-guest"},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: img.SectorSize, LBA: 0, Count: 16, Seed: "next-guest"},
	}
	run(t, machineConfig(srv, 1, 2, next))
	srv.StopClean(t)
	suite.CheckImage(t, img.Path)

	got := suite.ReadImage(t, img, first, count)
	hist := map[int]int{}
	for i := 0; i < count; i++ {
		lba := uint64(first + i)
		s := got[i*img.SectorSize : (i+1)*img.SectorSize]
		g := -1
		for cand := flushed; cand < generations; cand++ {
			if bytes.Equal(s, agentproto.Pattern(gen(cand), lba, img.SectorSize)) {
				g = cand
				break
			}
		}
		if g < 0 {
			t.Errorf("LBA %d starts %x: not a whole sector of generation %d or later", lba, s[:16], flushed)
			continue
		}
		hist[g]++
	}
	t.Logf("sectors per generation after the kill: %v", hist)
	if !bytes.Equal(suite.ReadImage(t, img, 0, 16), agentproto.Patterns("next-guest", 0, 16, img.SectorSize)) {
		t.Error("the next guest's write is not in the image")
	}
}
