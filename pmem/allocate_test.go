//go:build linux

package pmem_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/tmpfstest"
	"github.com/nvblk/nvblk/pmem"
)

func TestAllocateGivesASparseFileEveryBlock(t *testing.T) {
	fdcheck.Check(t)
	m, path := createMedium(t, pmem.Options{})
	if err := m.Allocate(); err != nil {
		t.Fatal(err)
	}
	if got := allocatedBytes(t, path); got < testSize {
		t.Fatalf("%d bytes allocated after Allocate, want the file's %d", got, testSize)
	}
}

func TestZeroOfAnAllocatedMediumKeepsItsBlocks(t *testing.T) {
	fdcheck.Check(t)
	m, path := createMedium(t, pmem.Options{})
	if err := m.Allocate(); err != nil {
		t.Fatal(err)
	}
	b, _ := m.Slice(0, 1<<20)
	copy(b, bytes.Repeat([]byte{7}, 1<<20))
	if err := m.Zero(100, 1<<20-200); err != nil {
		t.Fatal(err)
	}
	if got := allocatedBytes(t, path); got < testSize {
		t.Fatalf("Zero gave blocks of an allocated medium back: %d of %d bytes allocated", got, testSize)
	}
	if !bytes.Equal(b[100:1<<20-100], make([]byte, 1<<20-200)) || b[99] != 7 || b[1<<20-100] != 7 {
		t.Fatal("Zero of an allocated medium zeroed the wrong bytes")
	}
}

func TestAllocateWithoutTheSpaceSaysWhatIsMissingAndChangesNothing(t *testing.T) {
	fdcheck.Check(t)
	dir := tmpfstest.Mount(t, "8m")
	path := filepath.Join(dir, "disk.img")
	m, err := pmem.Open(path, pmem.Options{Create: true, Size: pmem.MinSize})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, _ := m.Slice(4096, 4096)
	copy(b, bytes.Repeat([]byte("data"), 1024))
	before := allocatedBytes(t, path)

	err = m.Allocate()
	if !errors.Is(err, pmem.ErrNoSpace) || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Allocate of 16 MiB on an 8 MiB tmpfs: %v, want ErrNoSpace and ENOSPC", err)
	}
	t.Log(err)
	for _, want := range []string{path, "16773120 bytes (16.0 MiB)", "(8.0 MiB) free"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	if strings.Count(err.Error(), "pmem: ") != 1 {
		t.Errorf("the error names the package other than once: %v", err)
	}
	if got := allocatedBytes(t, path); got != before {
		t.Errorf("a failed Allocate left %d bytes allocated, %d before", got, before)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != pmem.MinSize {
		t.Errorf("size after a failed Allocate: %v %v", st.Size(), err)
	}
	if !bytes.Equal(b, bytes.Repeat([]byte("data"), 1024)) {
		t.Error("a failed Allocate changed the medium's contents")
	}
}
