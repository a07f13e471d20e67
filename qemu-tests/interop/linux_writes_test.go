package interop

import (
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

func TestLinuxCreatesA4096ByteSectorBTTAndNvblkReadsWhatItWrote(t *testing.T) {
	linuxWritesNvblkReads(t, 64<<20, 4096, 1)
}

func TestLinuxCreatesA512ByteSectorBTTAndNvblkReadsWhatItWrote(t *testing.T) {
	linuxWritesNvblkReads(t, 64<<20, 512, 1)
}

// 320 MiB of 512-byte sectors: a map of 2.5 MiB, so the map and the flog
// sit far from the info block and nvblk must honour the offsets Linux
// wrote instead of assuming a small layout.
func TestLinuxCreatesABTTWithALargeMapAndNvblkReadsWhatItWrote(t *testing.T) {
	linuxWritesNvblkReads(t, 320<<20, 512, 1)
}

// Linux gives each CPU its own flog lane (nd_region_acquire_lane): with
// writes pinned to two CPUs, two lanes hold the latest map updates and
// nvblk must honour both.
func TestLinuxWritesThroughTwoFlogLanesAndNvblkReadsWhatItWrote(t *testing.T) {
	linuxWritesNvblkReads(t, 64<<20, 4096, 2)
}

func linuxWritesNvblkReads(t *testing.T, size int64, sectorSize, cpus int) {
	img := sparseImage(t, size)
	uuid := newUUID(t)
	dev := "/dev/pmem0s"
	// An LBA near the end, below the capacity whatever the metadata costs.
	high := uint64(size/int64(sectorSize+4)) * 9 / 10
	writes := []write{
		{0, pattern(t, 0, 1, 1, sectorSize)},
		{5, pattern(t, 5, 1, 3, sectorSize)}, // one write of three sectors
		{high, pattern(t, high, 1, 1, sectorSize)},
		// Rewriting LBA 0 moves it to another block through the flog: a
		// reader that ignores the map sees the first version.
		{0, pattern(t, 0, 2, 1, sectorSize)},
	}
	steps := []agentproto.Step{
		{Op: agentproto.OpMakeBTT, Namespace: "namespace0.0", Region: "region0", SectorSize: sectorSize, UUID: uuid},
		{Op: agentproto.OpRead, Path: "/sys/block/pmem0s/size"},
		{Op: agentproto.OpRead, Path: "/sys/block/pmem0s/queue/logical_block_size"},
	}
	for i, w := range writes {
		st := agentproto.Step{Op: agentproto.OpWriteSectors, Device: dev, SectorSize: sectorSize, LBA: w.LBA, Data: w.Data}
		if cpus > 1 {
			cpu := i % cpus
			st.CPU = &cpu
		}
		steps = append(steps, st)
	}
	readLow := len(steps)
	steps = append(steps, agentproto.Step{Op: agentproto.OpReadSectors, Device: dev, SectorSize: sectorSize, LBA: 0, Count: 10})
	readHigh := len(steps)
	steps = append(steps, agentproto.Step{Op: agentproto.OpReadSectors, Device: dev, SectorSize: sectorSize, LBA: high - 1, Count: 3})

	res := guest.Run(t, suite.Kit, guest.Config{NVDIMMs: []string{img}, CPUs: cpus, Steps: steps})
	t.Logf("guest run %v (agent up after %v)", res.Wall, res.BootToAgent)

	var made agentproto.MakeBTTData
	if err := res.Decode(0, &made); err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel BTT: %s -> /dev/%s via\n%s", made.BTT, made.Block, strings.Join(made.Trace, "\n"))
	if made.Block != "pmem0s" {
		t.Fatalf("kernel named the BTT disk %q; the script wrote to %s", made.Block, dev)
	}
	var sizeText, lbsText agentproto.ReadData
	if err := res.Decode(1, &sizeText); err != nil {
		t.Fatal(err)
	}
	if err := res.Decode(2, &lbsText); err != nil {
		t.Fatal(err)
	}
	sectors512, _ := strconv.ParseUint(strings.TrimSpace(sizeText.Text), 10, 64)
	if lbs := strings.TrimSpace(lbsText.Text); lbs != strconv.Itoa(sectorSize) {
		t.Fatalf("guest logical_block_size = %s, want %d", lbs, sectorSize)
	}
	nlba := sectors512 * 512 / uint64(sectorSize)
	if high+1 >= nlba {
		t.Fatalf("test picked LBA %d but the kernel's BTT has only %d", high, nlba)
	}
	want := expected(writes, sectorSize)
	var low, hi []agentproto.SectorDigest
	if err := res.Decode(readLow, &low); err != nil {
		t.Fatal(err)
	}
	if err := res.Decode(readHigh, &hi); err != nil {
		t.Fatal(err)
	}
	checkGuestReads(t, append(low, hi...), want, sectorSize)

	// The raw image carries what the kernel wrote, at the layout the tests
	// and nvblk expect.
	ib := readInfoBlock(t, img)
	if ib.UUID != uuidBytes(t, uuid) {
		t.Errorf("info block uuid %x, want the %s the guest gave", ib.UUID, uuid)
	}
	if int(ib.ExternalLBA) != sectorSize || uint64(ib.ExternalNLBA) != nlba {
		t.Errorf("info block says %d LBAs of %d bytes; guest saw %d of %d", ib.ExternalNLBA, ib.ExternalLBA, nlba, sectorSize)
	}
	t.Logf("kernel layout: v%d.%d, %d+%d free blocks of %d bytes, map at %d, flog at %d",
		ib.Major, ib.Minor, ib.InternalNLBA, ib.NFree, ib.InternalLBA, ib.MapOff, ib.LogOff)

	for lane := 0; lane < cpus; lane++ {
		if seq := flogSlotSeq(t, img, ib, lane, 1); seq == 0 {
			t.Errorf("flog lane %d was never written by the kernel; the test meant to use %d lanes", lane, cpus)
		}
	}

	suite.CheckImage(t, img)
	info := nvblkInfo(t, img)
	if info.UUID != uuid || info.SectorSize != sectorSize || info.NumSectors != nlba {
		t.Errorf("nvblk info: uuid %s, %d sectors of %d; the kernel made uuid %s, %d sectors of %d",
			info.UUID, info.NumSectors, info.SectorSize, uuid, nlba, sectorSize)
	}
	lbas := []uint64{0, 1, 4, 5, 6, 7, 8, high - 1, high, high + 1, nlba - 1}
	checkNvblkReads(t, img, lbas, want, sectorSize)
}
