package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/tmpfstest"
	"github.com/nvblk/nvblk/pmem"
)

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// sparseImage formats a BTT on a new sparse file of size bytes in dir, as
// format did before it allocated (and as other tools still do).
func sparseImage(t *testing.T, dir string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, "sparse.img")
	m, err := pmem.Open(path, pmem.Options{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := btt.Format(m, btt.FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	return path
}

// A guest writing into a hole of a full filesystem would fault; format
// leaves no hole.
func TestFormatAllocatesEveryBlockOfTheImage(t *testing.T) {
	fdcheck.Check(t)
	img := formatted(t)
	if got := allocated(t, img); got < 32<<20 {
		t.Fatalf("%d bytes of the 32 MiB image allocated after format", got)
	}
}

func TestServingASparseImageAllocatesItFirst(t *testing.T) {
	fdcheck.Check(t)
	img := sparseImage(t, t.TempDir(), 32<<20)
	if got := allocated(t, img); got >= 32<<20 {
		t.Fatalf("the sparse image already has %d bytes allocated", got)
	}
	m, d, err := openImage(img, false, pmem.DurabilityAuto) // as serve opens it
	if err != nil {
		t.Fatal(err)
	}
	// The device first: its clean close drops its process log.
	d.Close()
	m.Close()
	if got := allocated(t, img); got < 32<<20 {
		t.Fatalf("%d bytes of the 32 MiB image allocated after a writable open", got)
	}
}

func TestOpeningASparseImageReadOnlyLeavesItSparse(t *testing.T) {
	fdcheck.Check(t)
	img := sparseImage(t, t.TempDir(), 32<<20)
	before := allocated(t, img)
	m, _, err := openImage(img, true, pmem.DurabilityAuto)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if got := allocated(t, img); got != before {
		t.Fatalf("a read-only open allocated: %d bytes, %d before", got, before)
	}
}

func TestFormatWithoutTheSpaceFailsOnceAndLeavesNoImage(t *testing.T) {
	fdcheck.Check(t)
	dir := tmpfstest.Mount(t, "8m")
	img := filepath.Join(dir, "disk.img")
	code, _, stderr := nvblk(t, nil, "format", img, "--size", "32M")
	if code == 0 {
		t.Fatal("format of 32 MiB on an 8 MiB filesystem succeeded")
	}
	t.Log(stderr)
	for _, want := range []string{img, "33554432 bytes (32.0 MiB)", "(8.0 MiB) free", "no space left on device"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the error does not say %q: %s", want, stderr)
		}
	}
	if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("format left the image it could not allocate behind: %v", err)
	}
}

func TestServingASparseImageWithoutTheSpaceFailsAndLeavesItUsable(t *testing.T) {
	fdcheck.Check(t)
	dir := tmpfstest.Mount(t, "8m")
	img := sparseImage(t, dir, 32<<20)
	before := fileHash(t, img)
	m, _, err := openImage(img, false, pmem.DurabilityAuto)
	if err == nil {
		m.Close()
	}
	if !errors.Is(err, pmem.ErrNoSpace) {
		t.Fatalf("writable open of a 32 MiB sparse image on an 8 MiB filesystem: %v, want ErrNoSpace", err)
	}
	if fileHash(t, img) != before {
		t.Fatal("the failed open changed the image")
	}
	if code, out, stderr := nvblk(t, nil, "check", img); code != 0 {
		t.Fatalf("check after the failed open: exit %d: %s%s", code, out, stderr)
	}
}
