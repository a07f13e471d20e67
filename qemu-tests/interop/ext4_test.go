package interop

import (
	"encoding/binary"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// Linux puts a real file system on an nvblk-formatted BTT: mkfs, mount,
// write a file, remount, read it back, and fsck, with nvblk's checker
// agreeing afterwards that the BTT is sound.
func TestExt4OnAnNvblkFormattedBTTSurvivesRemountAndFsck(t *testing.T) {
	img, _ := formatImage(t, "64M", 4096, newUUID(t))
	content := pattern(t, 0, 1, 64, 4096) // 256 KiB
	dev := "/dev/pmem0s"
	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 20000},
		{Op: agentproto.OpExec, Argv: []string{"/sbin/mkfs.ext4", "-F", "-q", dev}},
		{Op: agentproto.OpMount, Source: dev, Target: "/mnt", FSType: "ext4"},
		{Op: agentproto.OpWrite, Path: "/mnt/payload.bin", Data: content},
		{Op: agentproto.OpUmount, Target: "/mnt"},
		// The read after remount must come from the BTT, not the page cache.
		{Op: agentproto.OpWrite, Path: "/proc/sys/vm/drop_caches", Value: "3"},
		{Op: agentproto.OpMount, Source: dev, Target: "/mnt", FSType: "ext4"},
		{Op: agentproto.OpRead, Path: "/mnt/payload.bin"},
		{Op: agentproto.OpUmount, Target: "/mnt"},
		{Op: agentproto.OpExec, Argv: []string{"/sbin/e2fsck", "-f", "-n", dev}},
	}
	res := guest.Run(t, suite.Kit, guest.Config{NVDIMMs: []string{img}, Steps: steps})
	t.Logf("guest run %v (agent up after %v)", res.Wall, res.BootToAgent)

	var back agentproto.ReadData
	if err := res.Decode(7, &back); err != nil {
		t.Fatal(err)
	}
	if back.Size != len(content) || back.SHA256 != sha(content) {
		t.Fatalf("file read back after remount: %d bytes sha256 %s, want %d bytes %s", back.Size, back.SHA256, len(content), sha(content))
	}
	var fsck agentproto.ExecData
	if err := res.Decode(9, &fsck); err != nil {
		t.Fatal(err)
	}
	t.Logf("e2fsck in the guest:\n%s", fsck.Output)

	suite.CheckImage(t, img)
	// The ext4 superblock sits 1 KiB into the disk: nvblk must find it
	// through the map where the kernel put it.
	sb, err := suite.NVBLK(t, nil, "read", img, "--lba", "0", "--count", "1")
	if err != nil {
		t.Fatal(err)
	}
	if len(sb) < 1024+58 || binary.LittleEndian.Uint16(sb[1024+56:]) != 0xEF53 {
		t.Fatalf("nvblk read of LBA 0 has no ext4 superblock magic (%d bytes)", len(sb))
	}
}
