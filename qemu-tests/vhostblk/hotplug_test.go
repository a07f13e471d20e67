package vhostblk

import (
	"fmt"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// A running guest gets an nvblk disk plugged in through QMP, does I/O,
// has it unplugged, and gets it plugged in again on the same socket: nvblk
// serves one front-end connection after another, and the second
// connection sees what the first wrote.
func TestDiskHotPluggedUnpluggedAndPluggedAgainIntoARunningGuest(t *testing.T) {
	img := suite.FormatImage(t, "64M", 4096)
	srv := serve(t, img, "--num-queues", "2")
	sector := func(op string, lba uint64, count int, seed string) agentproto.Step {
		return agentproto.Step{Op: op, Device: dev, SectorSize: img.SectorSize, LBA: lba, Count: count, Seed: seed}
	}
	const plugWait = 120_000 // ms: the test plugs once the agent is up
	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: plugWait},
		{Op: agentproto.OpRead, Path: "/sys/block/vda/size"},
		sector(agentproto.OpWriteSectors, 0, 8, "first-plug"),
		sector(agentproto.OpCheckSectors, 0, 8, "first-plug"),
		{Op: agentproto.OpFlush, Device: dev}, // 4: the test unplugs after this
		{Op: agentproto.OpWaitGone, Path: dev, TimeoutMS: plugWait},
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: plugWait},
		sector(agentproto.OpCheckSectors, 0, 8, "first-plug"),
		sector(agentproto.OpWriteSectors, 100, 8, "second-plug"),
		sector(agentproto.OpCheckSectors, 100, 8, "second-plug"),
		{Op: agentproto.OpFlush, Device: dev},
	}
	const unplugAfter = 4
	cfg := guest.Config{
		MemoryMiB:    256,
		SharedMemory: true,
		// PCI Express hot plug needs a slot: a root port with nothing in it.
		Args:  []string{"-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1"},
		Steps: steps,
	}
	m := guest.Start(t, suite.Kit, cfg)
	// virtio_blk must be loaded before the disk arrives, or nothing would
	// bind it.
	if _, err := m.WaitReport(agentproto.OpModules, guest.DefaultTimeout); err != nil {
		t.Fatal(err)
	}

	plug := func(n int) {
		t.Helper()
		chardev, device := fmt.Sprintf("c%d", n), fmt.Sprintf("vblk%d", n)
		if _, err := m.QMP("chardev-add", map[string]any{"id": chardev, "backend": map[string]any{
			"type": "socket", "data": map[string]any{
				"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": srv.Socket}},
				"server": false,
			}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := m.QMP("device_add", map[string]any{"driver": "vhost-user-blk-pci", "id": device,
			"chardev": chardev, "num-queues": 2, "bus": "rp0"}); err != nil {
			t.Fatal(err)
		}
		t.Logf("plugged %s on chardev %s (%s)", device, chardev, srv.Socket)
	}

	start := time.Now()
	plug(1)
	rep, err := m.WaitStep(unplugAfter, guest.DefaultTimeout)
	if err != nil || !rep.OK {
		t.Fatalf("guest I/O on the first plug: %+v %v", rep, err)
	}
	t.Logf("first plug: guest saw the disk and did its I/O in %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if _, err := m.QMP("device_del", map[string]any{"id": "vblk1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WaitEvent("DEVICE_DELETED", map[string]any{"device": "vblk1"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := m.QMP("chardev-remove", map[string]any{"id": "c1"}); err != nil {
		t.Fatal(err)
	}
	t.Logf("unplug: DEVICE_DELETED after %v", time.Since(start).Round(time.Millisecond))

	plug(2)
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	checkConsole(t, m)
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}

	srv.StopClean(t)
	suite.CheckImage(t, img.Path)
	ops := []ioOp{{ioWrite, 0, 8, "first-plug"}, {ioWrite, 100, 8, "second-plug"}}
	checkWholeDisk(t, suite.ReadImage(t, img, 0, int(img.NumSectors)), ops, img.SectorSize)
}
