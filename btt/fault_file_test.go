package btt

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/tmpfstest"
	"github.com/nvblk/nvblk/pmem"
)

// The faults these tests provoke are the real ones: an image file
// truncated under the open device (SIGBUS past its new end), and a sparse
// image whose filesystem fills up (SIGBUS on a store into a hole).

// fileDevice writes img into a new pmem file at path and opens the BTT on
// it; the medium and device are closed when the test ends.
func fileDevice(t *testing.T, path string, img []byte) (*pmem.Medium, *Device) {
	return fileDeviceIn(t, path, img, pmem.DurabilityFlush)
}

func fileDeviceIn(t *testing.T, path string, img []byte, mode pmem.Durability) (*pmem.Medium, *Device) {
	t.Helper()
	// A close that fails (a truncated image) keeps the process log, as it
	// must after a failure: in the test's own dir, not /dev/shm.
	m, err := pmem.Open(path, pmem.Options{Create: true, Size: int64(len(img)), Durability: mode, ProcessLogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	all, err := m.Slice(0, m.Size())
	if err != nil {
		t.Fatal(err)
	}
	copy(all, img)
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return m, d
}

func TestTruncatedImageFailsIOPastItsEndAndServesTheRest(t *testing.T) {
	fdcheck.Check(t)
	path := filepath.Join(t.TempDir(), "disk.img")
	_, d := fileDevice(t, path, twoArenas(t).buf)
	a1 := d.arenaList()[1]
	inFirst, inSecond := uint64(3), a1.externalStart+3
	for _, lba := range []uint64{inFirst, inSecond} {
		if err := d.WriteV(lba, [][]byte{pattern(4096, lba, 1)}); err != nil {
			t.Fatal(err)
		}
	}

	// Another process cuts the file in the middle of arena 1's data: its
	// map and flog are gone, arena 0 is whole.
	if err := os.Truncate(path, a1.dataOff+int64(len(a1.dataArea))/2); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if err := d.ReadV(inSecond, [][]byte{buf}); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("read past the new end: %v, want ErrMediaFault", err)
	}
	if err := d.WriteV(inSecond, [][]byte{buf}); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("write past the new end: %v, want ErrMediaFault", err)
	}
	if err := d.WriteZeroes(inSecond, 1); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("write zeroes past the new end: %v, want ErrMediaFault", err)
	}
	if err := d.ReadV(inFirst, [][]byte{buf}); err != nil || !bytes.Equal(buf, pattern(4096, inFirst, 1)) {
		t.Fatalf("read inside the file: err %v, same data %v", err, bytes.Equal(buf, pattern(4096, inFirst, 1)))
	}
	want := pattern(4096, inFirst, 2)
	if err := d.WriteV(inFirst, [][]byte{want}); err != nil {
		t.Fatalf("write inside the file: %v", err)
	}
	if err := d.ReadV(inFirst, [][]byte{buf}); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("read back inside the file: %v", err)
	}
}

func TestCheckOfAnImageTruncatedUnderItFailsWithAnError(t *testing.T) {
	fdcheck.Check(t)
	path := filepath.Join(t.TempDir(), "disk.img")
	m, d := fileDevice(t, path, twoArenas(t).buf)
	if err := os.Truncate(path, d.arenaList()[1].dataOff); err != nil {
		t.Fatal(err)
	}
	if _, err := Check(m, CheckOptions{}); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("check: %v, want ErrMediaFault", err)
	}
}

func TestImageTruncatedThroughItsFlogFailsTheArenaForWritesOnly(t *testing.T) {
	fdcheck.Check(t)
	path := filepath.Join(t.TempDir(), "disk.img")
	img := newMemMedium(32 << 20)
	if err := Format(img, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	// In sync mode every write stores its own flog entry.
	_, d := fileDeviceIn(t, path, img.buf, pmem.DurabilitySync)
	if err := d.WriteV(3, [][]byte{pattern(4096, 3, 1)}); err != nil {
		t.Fatal(err)
	}
	// The cut leaves the data and the map, takes the flog: a write gets
	// as far as its flog entry, when the free list and the medium begin to
	// disagree, so the arena stops taking writes.
	if err := os.Truncate(path, d.arenaList()[0].logOff); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteV(4, [][]byte{pattern(4096, 4, 1)}); !errors.Is(err, ErrMediaFault) || !errors.Is(err, ErrArenaFailed) {
		t.Fatalf("write whose flog is past the end: %v, want ErrMediaFault and ErrArenaFailed", err)
	}
	if err := d.WriteV(5, [][]byte{pattern(4096, 5, 1)}); !errors.Is(err, ErrArenaFailed) {
		t.Fatalf("next write: %v, want ErrArenaFailed", err)
	}
	buf := make([]byte, 4096)
	if err := d.ReadV(3, [][]byte{buf}); err != nil || !bytes.Equal(buf, pattern(4096, 3, 1)) {
		t.Fatalf("read after the arena failed: %v", err)
	}
}

// In flush mode writes store no flog entry: the commit a FLUSH runs does,
// and it is the commit that fails the arena, not the write.
func TestImageTruncatedThroughItsFlogFailsTheFlushModeCommitAndThenWrites(t *testing.T) {
	fdcheck.Check(t)
	path := filepath.Join(t.TempDir(), "disk.img")
	img := newMemMedium(32 << 20)
	if err := Format(img, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	_, d := fileDevice(t, path, img.buf)
	if err := d.WriteV(3, [][]byte{pattern(4096, 3, 1)}); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, d.arenaList()[0].logOff); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteV(4, [][]byte{pattern(4096, 4, 1)}); err != nil {
		t.Fatalf("write before the flush: %v (it stores no flog entry)", err)
	}
	if err := d.Flush(); !errors.Is(err, ErrArenaFailed) {
		t.Fatalf("flush whose commit meets the cut: %v, want ErrArenaFailed", err)
	}
	if err := d.WriteV(5, [][]byte{pattern(4096, 5, 1)}); !errors.Is(err, ErrArenaFailed) {
		t.Fatalf("next write: %v, want ErrArenaFailed", err)
	}
	buf := make([]byte, 4096)
	for lba, gen := range map[uint64]int{3: 1, 4: 1} {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil || !bytes.Equal(buf, pattern(4096, lba, gen)) {
			t.Fatalf("read LBA %d after the arena failed: %v", lba, err)
		}
	}
}

func TestSparseImageOnAFilesystemThatFillsUpFailsOnlyTheWritesWithoutSpace(t *testing.T) {
	fdcheck.Check(t)
	dir := tmpfstest.Mount(t, "8m")
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// 16 MiB of image on 8 MiB of filesystem, left sparse: the blocks of
	// sectors written are allocated as the writes store into them.
	m, err := pmem.Open(filepath.Join(dir, "disk.img"), pmem.Options{Create: true, Size: 16<<20 + v11Offset, Durability: pmem.DurabilityFlush})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := Format(m, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	var written, failed []uint64
	for lba := range d.NumSectors() {
		err := d.WriteV(lba, [][]byte{pattern(4096, lba, 1)})
		switch {
		case err == nil:
			written = append(written, lba)
		case errors.Is(err, ErrMediaFault) && !errors.Is(err, ErrArenaFailed):
			failed = append(failed, lba)
		default:
			t.Fatalf("write LBA %d on a full filesystem: %v, want ErrMediaFault (and the arena still writable)", lba, err)
		}
	}
	if len(failed) == 0 || len(written) == 0 {
		t.Fatalf("%d writes landed and %d failed: the filesystem never filled up, or never had room", len(written), len(failed))
	}
	// On tmpfs even a load from a hole needs a page: Check, which reads
	// every map entry, fails while the filesystem is full, and says so.
	if _, err := Check(m, CheckOptions{}); err != nil && !errors.Is(err, ErrMediaFault) {
		t.Fatalf("check on the full filesystem: %v, want success or ErrMediaFault", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	mustBeConsistent(t, m)
	// The first writes that failed land now; the rest may still not fit.
	for _, lba := range failed[:64] {
		if err := d.WriteV(lba, [][]byte{pattern(4096, lba, 1)}); err != nil {
			t.Fatalf("write LBA %d once space was freed: %v", lba, err)
		}
		written = append(written, lba)
	}
	buf := make([]byte, 4096)
	for _, lba := range written {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil || !bytes.Equal(buf, pattern(4096, lba, 1)) {
			t.Fatalf("LBA %d: err %v, reads back what was written %v", lba, err, bytes.Equal(buf, pattern(4096, lba, 1)))
		}
	}
	mustBeConsistent(t, m)
}
