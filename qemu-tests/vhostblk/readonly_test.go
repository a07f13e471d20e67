package vhostblk

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// refused are the errors a write to a read-only disk may get in the guest:
// EPERM from the block layer (blkdev_write_iter on a read-only bdev),
// EROFS from open, or EIO should a request reach the device and be
// refused there.
var refused = []string{"operation not permitted", "read-only file system", "input/output error"}

// With --read-only the guest finds a read-only disk whose data it can read,
// every kind of write it tries is refused, and the image file is
// byte-for-byte what it was.
func TestReadOnlyDiskRefusesEveryGuestWriteAndLeavesTheImageUntouched(t *testing.T) {
	img := suite.FormatImage(t, "64M", 4096)
	const seed = "before-read-only"
	if _, err := suite.NVBLK(t, agentproto.Patterns(seed, 10, 4, img.SectorSize), "write", img.Path, "--lba", "10"); err != nil {
		t.Fatal(err)
	}
	before := fileSHA256(t, img.Path)
	srv := serve(t, img, "--read-only", "--num-queues", "2")
	sector := func(op string, st agentproto.Step) agentproto.Step {
		st.Op, st.Device, st.SectorSize = op, dev, img.SectorSize
		return st
	}
	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpRead, Path: "/sys/block/vda/ro"},
		sector(agentproto.OpCheckSectors, agentproto.Step{LBA: 10, Count: 4, Seed: seed}),
		sector(agentproto.OpWriteSectors, agentproto.Step{LBA: 10, Count: 1, Seed: "must-not-land", ExpectError: refused}),
		sector(agentproto.OpWriteSectors, agentproto.Step{LBA: 0, Count: 8, Seed: "must-not-land", ExpectError: refused}),
		sector(agentproto.OpDiscard, agentproto.Step{LBA: 10, Count: 4, ExpectError: refused}),
		sector(agentproto.OpZeroOut, agentproto.Step{LBA: 10, Count: 4, ExpectError: refused}),
		{Op: agentproto.OpExec, Argv: []string{"/sbin/mkfs.ext4", "-F", "-q", dev}, ExpectError: []string{"exit status"}},
		sector(agentproto.OpCheckSectors, agentproto.Step{LBA: 10, Count: 4, Seed: seed}),
		sector(agentproto.OpCheckSectors, agentproto.Step{LBA: 0, Count: 10}),
	}
	res := run(t, machineConfig(srv, 1, 2, steps))

	if ro := decode[agentproto.ReadData](t, res, 1); strings.TrimSpace(ro.Text) != "1" {
		t.Errorf("guest /sys/block/vda/ro = %q, want 1", ro.Text)
	}
	for i := 3; i <= 7; i++ {
		rep, _ := res.Step(i)
		t.Logf("guest %s refused as expected: %s", rep.Op, rep.Data)
	}
	srv.StopClean(t)
	if after := fileSHA256(t, img.Path); after != before {
		t.Fatalf("image sha256 %s after the read-only guest, %s before", after, before)
	}
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
