package vhostblk

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// The operator grows the disk under a running guest with nvblk grow
// --control-socket: QEMU gets VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, reads
// the config space again and tells the guest, whose virtio_blk takes the
// new capacity; the guest then writes and reads back past the old end.
func TestGuestSeesItsDiskGrowUnderIt(t *testing.T) {
	img := suite.FormatImage(t, "64M", 4096)
	// The capacity a grow to 128 MiB gives, learnt from a grow of a copy.
	grownSectors := grownCapacity(t, img.Path, "128M")
	ctl := filepath.Join(t.TempDir(), "nvblk.ctl")
	b := serve(t, img, "--control-socket", ctl)

	oldSize := strconv.FormatUint(img.NumSectors*8, 10) // 512-byte units in sysfs
	newSize := strconv.FormatUint(grownSectors*8, 10)
	last := grownSectors - 1
	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 20000},
		{Op: agentproto.OpWait, Path: "/sys/block/vda/size", Value: oldSize + "\n", TimeoutMS: 5000},
		{Op: agentproto.OpWait, Path: "/sys/block/vda/size", Value: newSize + "\n", TimeoutMS: 60000},
		{Op: agentproto.OpWriteSectors, Device: dev, SectorSize: 4096, LBA: last, Count: 1, Seed: "grown"},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: 4096, LBA: last, Count: 1, Seed: "grown"},
	}
	m := guest.Start(t, suite.Kit, machineConfig(b, 1, 1, steps))
	if _, err := m.WaitStep(1, 2*time.Minute); err != nil {
		t.Fatalf("the guest never saw the disk's first size: %v", err)
	}
	out, err := suite.NVBLK(t, nil, "grow", "--control-socket", ctl, "--size", "128M")
	if err != nil {
		t.Fatalf("nvblk grow: %v", err)
	}
	t.Logf("nvblk grow: %s", strings.TrimSpace(string(out)))
	if !strings.Contains(string(out), "1 front-end(s) told") {
		t.Fatalf("nvblk grow told no front-end: %s", out)
	}
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.Console(), "detected capacity change") {
		t.Errorf("the guest's console has no \"detected capacity change\":\n%s", m.Console())
	}
	checkConsole(t, m)
	b.StopClean(t)
	if got := suite.ReadImage(t, img, last, 1); string(got) != string(agentproto.Pattern("grown", last, 4096)) {
		t.Errorf("LBA %d on the image after the guest wrote it past the old end differs", last)
	}
	suite.CheckImage(t, img.Path)
}

// grownCapacity grows a copy of image to size offline and returns its
// sector count.
func grownCapacity(t *testing.T, image, size string) uint64 {
	t.Helper()
	b, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy.img")
	if err := os.WriteFile(cp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := suite.NVBLK(t, nil, "grow", cp, "--size", size); err != nil {
		t.Fatal(err)
	}
	out, err := suite.NVBLK(t, nil, "info", cp, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var info guest.Image
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	return info.NumSectors
}
