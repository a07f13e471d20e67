package vhostblk

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// An ext4 file system made and filled by one guest is, after nvblk has
// been stopped and started again on the image, found clean by e2fsck and
// holding every file, byte for byte, by a second guest.
func TestExt4WrittenByOneGuestIsReadBackWholeByTheNextBoot(t *testing.T) {
	img := suite.FormatImage(t, "64M", 4096)
	const seed, nfiles = "ext4-tree", 18
	want := treeDigests(seed, nfiles)

	first := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpExec, Argv: []string{"/sbin/mkfs.ext4", "-F", "-q", dev}},
		{Op: agentproto.OpMount, Source: dev, Target: "/mnt", FSType: "ext4"},
		{Op: agentproto.OpWriteTree, Path: "/mnt/tree", Seed: seed, Count: nfiles},
		{Op: agentproto.OpUmount, Target: "/mnt"},
		{Op: agentproto.OpExec, Argv: []string{"/sbin/e2fsck", "-f", "-n", dev}},
	}
	srv := serve(t, img, "--num-queues", "2")
	res := run(t, machineConfig(srv, 1, 2, first))
	wrote := decode[[]agentproto.FileDigest](t, res, 3)
	slices.SortFunc(wrote, byPath)
	if !slices.Equal(wrote, want) {
		t.Fatalf("first guest wrote %v, want %v", wrote, want)
	}
	fsck := decode[agentproto.ExecData](t, res, 5)
	t.Logf("e2fsck after the first boot:\n%s", fsck.Output)
	srv.StopClean(t)
	suite.CheckImage(t, img.Path)

	second := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpExec, Argv: []string{"/sbin/e2fsck", "-f", "-n", dev}},
		{Op: agentproto.OpMount, Source: dev, Target: "/mnt", FSType: "ext4"},
		{Op: agentproto.OpHashTree, Path: "/mnt/tree"},
		{Op: agentproto.OpUmount, Target: "/mnt"},
	}
	srv = serve(t, img, "--num-queues", "2")
	res = run(t, machineConfig(srv, 1, 2, second))
	got := decode[[]agentproto.FileDigest](t, res, 3)
	if !slices.Equal(got, want) {
		for _, g := range got {
			if !slices.Contains(want, g) {
				t.Errorf("second guest found %+v", g)
			}
		}
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("second guest did not find %+v", w)
			}
		}
	}
	srv.StopClean(t)
	suite.CheckImage(t, img.Path)
}

// treeDigests is what the agent must report of agentproto.Tree, computed
// on the host, sorted as hash-tree sorts.
func treeDigests(seed string, n int) []agentproto.FileDigest {
	var out []agentproto.FileDigest
	for _, f := range agentproto.Tree(seed, n) {
		sum := sha256.Sum256(f.Content(seed))
		out = append(out, agentproto.FileDigest{Path: f.Path, Size: f.Size, SHA256: hex.EncodeToString(sum[:])})
	}
	slices.SortFunc(out, byPath)
	return out
}

func byPath(a, b agentproto.FileDigest) int { return strings.Compare(a.Path, b.Path) }

// A guest boots with its root file system on the nvblk disk: a first
// guest installs a root (the static agent as /sbin/init and its script)
// into an ext4 on the disk; a second guest, whose initramfs holds nothing
// but the agent and the virtio and ext4 modules, mounts the disk and
// switches root into it; the init there proves "/" is the nvblk disk and
// writes a marker file, which the host then finds inside the image
// through the BTT.
func TestGuestBootsWithItsRootFileSystemOnTheNvblkDisk(t *testing.T) {
	img := suite.FormatImage(t, "64M", 4096)
	const markerSeed = "root-marker"
	onDisk := []agentproto.Step{
		{Op: agentproto.OpRootMount, Device: dev},
		{Op: agentproto.OpWrite, Path: "/nvblk-was-here", Seed: markerSeed, Size: 4096},
		{Op: agentproto.OpList, Path: "/"},
	}
	script, err := json.Marshal(onDisk)
	if err != nil {
		t.Fatal(err)
	}
	install := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpExec, Argv: []string{"/sbin/mkfs.ext4", "-F", "-q", "-L", "nvblkroot", dev}},
		{Op: agentproto.OpMount, Source: dev, Target: "/mnt", FSType: "ext4"},
		{Op: agentproto.OpCopy, Path: "/init", Target: "/mnt/sbin/init"},
		{Op: agentproto.OpWrite, Path: "/mnt" + agentproto.ScriptPath, Data: script},
		{Op: agentproto.OpUmount, Target: "/mnt"},
		{Op: agentproto.OpExec, Argv: []string{"/sbin/e2fsck", "-f", "-n", dev}},
	}
	srv := serve(t, img)
	run(t, machineConfig(srv, 1, 1, install))
	srv.StopClean(t)
	suite.CheckImage(t, img.Path)

	initrd := filepath.Join(t.TempDir(), "minimal.cpio")
	if err := suite.Kit.MinimalInitramfs(initrd, "virtio_pci", "virtio_blk", "crc32c_generic", "ext4"); err != nil {
		t.Fatal(err)
	}
	srv = serve(t, img)
	cfg := machineConfig(srv, 1, 1, []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpSwitchRoot, Source: dev, Target: "/newroot", FSType: "ext4", Path: "/sbin/init"},
	})
	cfg.Initramfs = initrd
	m := guest.Start(t, suite.Kit, cfg)
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	checkConsole(t, m)
	stages := res.Stages()
	if len(stages) != 2 {
		t.Fatalf("want the initramfs agent then the disk's init to report, got %d boots: %+v", len(stages), res.Reports)
	}
	if rep, ok := stages[0].Step(1); !ok || !rep.OK || rep.Op != agentproto.OpSwitchRoot {
		t.Fatalf("initramfs agent's switch-root: %+v", stages[0].Reports)
	}
	fromDisk := stages[1]
	if err := fromDisk.Finished(); err != nil {
		t.Fatalf("init on the nvblk root: %v", err)
	}
	root := decode[agentproto.RootMountData](t, fromDisk, 0)
	t.Logf("the disk's init sees / as: %s", root.Line)
	if root.Source != dev || root.FSType != "ext4" {
		t.Fatalf("/ of the disk's init is %s on %s, want ext4 on %s", root.FSType, root.Source, dev)
	}
	srv.StopClean(t)
	suite.CheckImage(t, img.Path)

	// The marker is 4 KiB of ChaCha8 output named only by its seed in the
	// script, so finding its bytes on the disk means the init on the disk
	// ran and wrote them through nvblk. ext4 puts a file's data in whole
	// blocks, so it sits at a 4 KiB boundary.
	marker := agentproto.PatternBytes(markerSeed, 4096)
	disk := suite.ReadImage(t, img, 0, int(img.NumSectors))
	at := -1
	for off := 0; off+len(marker) <= len(disk); off += 4096 {
		if bytes.Equal(disk[off:off+len(marker)], marker) {
			at = off
			break
		}
	}
	if at < 0 {
		t.Fatalf("the marker the disk's init wrote is nowhere in the %d bytes nvblk reads from the image", len(disk))
	}
	t.Logf("marker found by nvblk read at byte %d (LBA %d)", at, at/img.SectorSize)
}
