package interop

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// nvblk grow chains a new arena after the last; the kernel's nd_btt, which
// walks the chain by nextoff, must see the grown capacity, the old data and
// the new arena, and write both.
func TestNvblkGrowsAnImageAndLinuxReadsAndWritesBothArenas(t *testing.T) {
	const sectorSize = 4096
	img, ib := formatImage(t, "64M", sectorSize, newUUID(t))
	oldLast := uint64(ib.ExternalNLBA) - 1
	hostSide := []write{
		{0, pattern(t, 0, 1, 1, sectorSize)},
		{oldLast, pattern(t, oldLast, 1, 1, sectorSize)},
	}
	hostWrites(t, img, hostSide)
	if _, err := suite.NVBLK(t, nil, "grow", img, "--size", "128M"); err != nil {
		t.Fatalf("nvblk grow: %v", err)
	}
	out, err := suite.NVBLK(t, nil, "info", img, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		NumSectors uint64            `json:"num_sectors"`
		Arenas     []json.RawMessage `json:"arenas"`
	}
	if err := json.Unmarshal(out, &info); err != nil || len(info.Arenas) != 2 {
		t.Fatalf("info after grow: %v, %d arenas: %s", err, len(info.Arenas), out)
	}
	nlba := info.NumSectors
	newLast := nlba - 1
	grown := []write{{newLast, pattern(t, newLast, 1, 1, sectorSize)}} // in the new arena
	hostWrites(t, img, grown)
	hostSide = append(hostSide, grown...)

	guestSide := []write{
		{1, pattern(t, 1, 2, 1, sectorSize)},
		{oldLast + 1, pattern(t, oldLast+1, 2, 1, sectorSize)}, // the new arena's first
		{newLast, pattern(t, newLast, 2, 1, sectorSize)},
	}
	dev := "/dev/pmem0s"
	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 20000},
		{Op: agentproto.OpRead, Path: "/sys/block/pmem0s/size"},
		{Op: agentproto.OpReadSectors, Device: dev, SectorSize: sectorSize, LBA: 0, Count: 2},
		{Op: agentproto.OpReadSectors, Device: dev, SectorSize: sectorSize, LBA: oldLast, Count: 2},
		{Op: agentproto.OpReadSectors, Device: dev, SectorSize: sectorSize, LBA: newLast, Count: 1},
	}
	for _, w := range guestSide {
		steps = append(steps, agentproto.Step{Op: agentproto.OpWriteSectors, Device: dev, SectorSize: sectorSize, LBA: w.LBA, Data: w.Data})
	}
	res := guest.Run(t, suite.Kit, guest.Config{NVDIMMs: []string{img}, Steps: steps})
	t.Logf("guest run %v (agent up after %v)", res.Wall, res.BootToAgent)

	var sizeText agentproto.ReadData
	if err := res.Decode(1, &sizeText); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(sizeText.Text), strconv.FormatUint(nlba*sectorSize/512, 10); got != want {
		t.Errorf("guest /sys/block/pmem0s/size = %s 512-byte units, want %s: the grown %d LBAs", got, want, nlba)
	}
	before := expected(hostSide, sectorSize)
	for _, step := range []int{2, 3, 4} {
		var got []agentproto.SectorDigest
		if err := res.Decode(step, &got); err != nil {
			t.Fatal(err)
		}
		checkGuestReads(t, got, before, sectorSize)
	}
	suite.CheckImage(t, img)
	after := expected(append(hostSide, guestSide...), sectorSize)
	checkNvblkReads(t, img, []uint64{0, 1, oldLast, oldLast + 1, newLast}, after, sectorSize)
}
