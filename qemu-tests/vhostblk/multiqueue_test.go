package vhostblk

import (
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// Two vCPUs, two virtqueues: writers pinned to each CPU submit at the same
// time, blk-mq sends each CPU's requests down its own hardware queue (the
// guest's per-queue counters prove both carried writes), nvblk serves the
// queues concurrently, and every sector lands where it was aimed.
func TestTwoCPUsWriteConcurrentlyThroughTwoQueues(t *testing.T) {
	img := suite.FormatImage(t, "64M", 4096)
	srv := serve(t, img, "--num-queues", "2")
	const (
		seed  = "multiqueue"
		first = 64
		count = 2048 // 8 MiB
	)
	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpList, Path: "/sys/block/vda/mq"},
		{Op: agentproto.OpRead, Path: "/proc/interrupts"},
		// Four writers, two per CPU, 16 KiB per write, interleaved so that
		// neighbouring chunks travel on different queues.
		{Op: agentproto.OpParallel, Device: dev, SectorSize: img.SectorSize, LBA: first, Count: count,
			Chunk: 4, Workers: 4, Seed: seed},
		{Op: agentproto.OpRead, Path: "/proc/interrupts"},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: img.SectorSize, LBA: first, Count: count, Seed: seed},
		// Zeroes on both sides: no write strayed out of its range.
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: img.SectorSize, LBA: 0, Count: first},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: img.SectorSize, LBA: first + count, Count: 64},
	}
	cfg := machineConfig(srv, 2, 2, steps)
	res := run(t, cfg)

	if mq := decode[[]string](t, res, 1); len(mq) != 2 {
		t.Errorf("guest /sys/block/vda/mq = %v, want two hardware queues", mq)
	}
	// Each request virtqueue has its own MSI-X vector (virtioN-req.Q in
	// /proc/interrupts): its count is the completions nvblk signalled on
	// that queue.
	before, after := queueInterrupts(t, decode[agentproto.ReadData](t, res, 2).Text),
		queueInterrupts(t, decode[agentproto.ReadData](t, res, 4).Text)
	for q := range 2 {
		n := after[q] - before[q]
		t.Logf("virtqueue req.%d: %d interrupts during the parallel write", q, n)
		if n < count/4/8 {
			t.Errorf("virtqueue req.%d signalled %d completions during the parallel write, want a fair share of the %d writes", q, n, count/4)
		}
	}
	workers := decode[[]agentproto.WorkerData](t, res, 3)
	for _, w := range workers {
		t.Logf("writer %d pinned to CPU %d ran on %v: %d writes", w.Worker, w.Pinned, w.CPUs, w.Writes)
		if len(w.CPUs) != 1 || w.CPUs[0] != w.Pinned || w.Writes != count/4/4 {
			t.Errorf("writer %+v: want %d writes, all on CPU %d", w, count/4/4, w.Pinned)
		}
	}

	srv.StopClean(t)
	suite.CheckImage(t, img.Path)
	ops := []ioOp{{ioWrite, first, count, seed}}
	checkWholeDisk(t, suite.ReadImage(t, img, 0, int(img.NumSectors)), ops, img.SectorSize)
}

// queueInterrupts sums, per request queue, the interrupt counts of the
// virtio-blk vectors named "virtioN-req.Q" over all CPUs.
func queueInterrupts(t *testing.T, procInterrupts string) map[int]int {
	t.Helper()
	out := map[int]int{}
	for _, line := range strings.Split(procInterrupts, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := f[len(f)-1]
		i := strings.Index(name, "-req.")
		if !strings.HasPrefix(name, "virtio") || i < 0 {
			continue
		}
		q, err := strconv.Atoi(name[i+len("-req."):])
		if err != nil {
			t.Fatalf("/proc/interrupts line %q: %v", line, err)
		}
		for _, c := range f[1:] {
			n, err := strconv.Atoi(c)
			if err != nil {
				break // the per-CPU counts end where the chip name starts
			}
			out[q] += n
		}
	}
	if len(out) == 0 {
		t.Fatalf("no virtio request-queue interrupts in /proc/interrupts:\n%s", procInterrupts)
	}
	return out
}
