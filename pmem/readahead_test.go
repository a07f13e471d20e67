package pmem_test

import (
	"bufio"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// vmFlagsOf returns the VmFlags of each of this process's mappings of
// path, from /proc/self/smaps.
func vmFlagsOf(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]string
	in := false
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		// A mapping's first line is "start-end perms offset dev inode
		// [path]"; the lines after it are "Key: value".
		if fields := strings.Fields(line); len(fields) >= 5 && !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && fields[5] == path
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			out = append(out, strings.Fields(strings.TrimPrefix(line, "VmFlags:")))
		}
	}
	return out
}

// TestAWritableImageIsMappedWithoutReadahead: a BTT's scattered writes on a
// page-cache image cost about five times less when the cache holds the
// image in pages rather than in the large folios readahead brings in
// (mapping.go).
func TestAWritableImageIsMappedWithoutReadahead(t *testing.T) {
	_, path := createMedium(t, pmem.Options{})
	maps := vmFlagsOf(t, path)
	if len(maps) != 1 || !slices.Contains(maps[0], "rr") {
		t.Fatalf("writable image mapped with VmFlags %v: want one mapping with rr (MADV_RANDOM)", maps)
	}
}

// TestAReadOnlyImageKeepsReadahead: nvblk read and check go through an
// image in order, which readahead serves.
func TestAReadOnlyImageKeepsReadahead(t *testing.T) {
	m, path := createMedium(t, pmem.Options{})
	m.Close()
	ro, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	maps := vmFlagsOf(t, path)
	if len(maps) != 1 || slices.Contains(maps[0], "rr") {
		t.Fatalf("read-only image mapped with VmFlags %v: want one mapping without rr", maps)
	}
}
