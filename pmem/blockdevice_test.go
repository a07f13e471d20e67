//go:build linux

package pmem_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// attachLoopDevice backs a fresh loop device with a file of size bytes, or skips the test
// where loop devices cannot be made (not root, no loop driver, a restricted container).
func attachLoopDevice(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	backing := writeFileOfSize(t, size)
	out, err := exec.Command("losetup", "--find", "--show", backing).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func TestABlockDeviceIsSizedBySeekingAndMappedThroughItsPageCache(t *testing.T) {
	dev := attachLoopDevice(t, 17<<20)
	m, err := pmem.Open(dev, pmem.Options{})
	if err != nil {
		t.Fatalf("Open(%s): %v", dev, err)
	}
	defer m.Close()
	if m.Kind() != pmem.KindBlockDevice || m.Size() != 17<<20 || m.MapSync() || m.Durability() != pmem.DurabilityFlush {
		t.Fatalf("Kind %v, Size %d, MapSync %v, Durability %v; want block device, %d, false, flush",
			m.Kind(), m.Size(), m.MapSync(), m.Durability(), 17<<20)
	}
	b, _ := m.Slice(5<<20, 4)
	copy(b, "bdev")
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 4)
	f.ReadAt(got, 5<<20)
	if string(got) != "bdev" {
		t.Errorf("device reads %q after Flush, want %q", got, "bdev")
	}
	if err := m.Zero(5<<20, 2); err != nil || !bytes.Equal(b, []byte{0, 0, 'e', 'v'}) {
		t.Errorf("Zero on a block device: %v, bytes now % x", err, b)
	}
}

func TestABlockDeviceIsClaimedExclusivelyAgainstOtherProcesses(t *testing.T) {
	dev := attachLoopDevice(t, 17<<20)
	m, err := pmem.Open(dev, pmem.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if out := runChild(t, "try", dev, false); !strings.Contains(out, "busy") {
		t.Errorf("another process opening the claimed device: %q, want busy", out)
	}
}

func TestDAXDurabilityOnABlockDeviceIsRefused(t *testing.T) {
	dev := attachLoopDevice(t, 17<<20)
	_, err := pmem.Open(dev, pmem.Options{Durability: pmem.DurabilityDAX})
	if !errors.Is(err, pmem.ErrNotDAX) {
		t.Fatalf("err = %v, want ErrNotDAX", err)
	}
}
