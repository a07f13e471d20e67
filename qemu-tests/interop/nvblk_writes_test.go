package interop

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

func TestNvblkFormats4096ByteSectorsAndLinuxReadsAndWritesThem(t *testing.T) {
	nvblkWritesLinuxReads(t, 64<<20, 4096)
}

func TestNvblkFormats512ByteSectorsAndLinuxReadsAndWritesThem(t *testing.T) {
	nvblkWritesLinuxReads(t, 64<<20, 512)
}

// formatImage runs nvblk format and returns the image and the info block
// nvblk wrote, as Linux will parse it.
func formatImage(t *testing.T, size string, sectorSize int, uuid string) (string, infoBlock) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "nvblk.img")
	if _, err := suite.NVBLK(t, nil, "format", img, "--size", size, "--sector-size", strconv.Itoa(sectorSize), "--uuid", uuid); err != nil {
		t.Fatal(err)
	}
	ib := readInfoBlock(t, img)
	if int(ib.ExternalLBA) != sectorSize {
		t.Fatalf("nvblk format wrote external_lbasize %d, want %d", ib.ExternalLBA, sectorSize)
	}
	return img, ib
}

func hostWrites(t *testing.T, img string, writes []write) {
	t.Helper()
	for _, w := range writes {
		if _, err := suite.NVBLK(t, w.Data, "write", img, "--lba", strconv.FormatUint(w.LBA, 10)); err != nil {
			t.Fatal(err)
		}
	}
}

func nvblkWritesLinuxReads(t *testing.T, size int64, sectorSize int) {
	uuid := newUUID(t)
	img, ib := formatImage(t, strconv.FormatInt(size>>20, 10)+"M", sectorSize, uuid)
	nlba := uint64(ib.ExternalNLBA)
	last := nlba - 1
	hostSide := []write{
		{0, pattern(t, 0, 1, 1, sectorSize)},
		{3, pattern(t, 3, 1, 2, sectorSize)},
		{last, pattern(t, last, 1, 1, sectorSize)},
	}
	hostWrites(t, img, hostSide)
	if _, err := suite.NVBLK(t, nil, "check", img); err != nil {
		t.Fatalf("nvblk check before the guest: %v", err)
	}

	guestSide := []write{
		{1, pattern(t, 1, 2, 1, sectorSize)},
		{3, pattern(t, 3, 2, 1, sectorSize)}, // overwrites the host's first of two
		{last - 1, pattern(t, last-1, 2, 1, sectorSize)},
	}
	dev := "/dev/pmem0s"
	steps := []agentproto.Step{
		// No sysfs setup: nd_pmem finds nvblk's info block on its own.
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 20000},
		{Op: agentproto.OpRead, Path: "/sys/block/pmem0s/size"},
		{Op: agentproto.OpRead, Path: "/sys/block/pmem0s/queue/logical_block_size"},
		{Op: agentproto.OpRead, Path: "/sys/block/pmem0s/device/uuid"},
		{Op: agentproto.OpReadSectors, Device: dev, SectorSize: sectorSize, LBA: 0, Count: 6},
		{Op: agentproto.OpReadSectors, Device: dev, SectorSize: sectorSize, LBA: last - 1, Count: 2},
	}
	for _, w := range guestSide {
		steps = append(steps, agentproto.Step{Op: agentproto.OpWriteSectors, Device: dev, SectorSize: sectorSize, LBA: w.LBA, Data: w.Data})
	}
	res := guest.Run(t, suite.Kit, guest.Config{NVDIMMs: []string{img}, Steps: steps})
	t.Logf("guest run %v (agent up after %v)", res.Wall, res.BootToAgent)

	var sizeText, lbsText, uuidText agentproto.ReadData
	for i, v := range []*agentproto.ReadData{&sizeText, &lbsText, &uuidText} {
		if err := res.Decode(1+i, v); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := strings.TrimSpace(sizeText.Text), strconv.FormatUint(nlba*uint64(sectorSize)/512, 10); got != want {
		t.Errorf("guest /sys/block/pmem0s/size = %s 512-byte units, want %s (%d LBAs of %d)", got, want, nlba, sectorSize)
	}
	if got := strings.TrimSpace(lbsText.Text); got != strconv.Itoa(sectorSize) {
		t.Errorf("guest logical_block_size = %s, want %d", got, sectorSize)
	}
	if got := strings.TrimSpace(uuidText.Text); got != uuid {
		t.Errorf("guest BTT uuid = %s, want %s from nvblk format", got, uuid)
	}
	before := expected(hostSide, sectorSize)
	for _, step := range []int{4, 5} {
		var got []agentproto.SectorDigest
		if err := res.Decode(step, &got); err != nil {
			t.Fatal(err)
		}
		checkGuestReads(t, got, before, sectorSize)
	}

	suite.CheckImage(t, img)
	after := expected(append(hostSide, guestSide...), sectorSize)
	checkNvblkReads(t, img, []uint64{0, 1, 2, 3, 4, 5, last - 2, last - 1, last}, after, sectorSize)
}
