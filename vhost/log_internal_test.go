package vhost

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhostuser"
)

const page = vhostuser.LogPageSize

// testLog maps a size-byte log from a memfd of fileSize bytes and returns
// it with the memfd's own mapping, to read the bits as the front-end does.
func testLog(t *testing.T, size, off, fileSize uint64) (*dirtyLog, []byte, *atomic.Uint64) {
	t.Helper()
	fdcheck.Check(t)
	fd, err := unix.MemfdCreate("test-log", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd) // the mappings keep the memory
	if err := unix.Ftruncate(fd, int64(fileSize)); err != nil {
		t.Fatal(err)
	}
	view, err := unix.Mmap(fd, 0, int(fileSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(view) })
	var outside atomic.Uint64
	d, err := newDirtyLog(vhostuser.Log{MmapSize: size, MmapOffset: off}, fd, 0, nil, &outside)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.unmap() })
	return d, view[off:], &outside
}

// marked lists the pages whose bits are set in log, by the spec's layout:
// page p is bit p%8 of byte p/8.
func marked(log []byte, size uint64) []uint64 {
	var out []uint64
	for i := uint64(0); i < size; i++ {
		for bit := uint64(0); bit < 8; bit++ {
			if log[i]&(1<<bit) != 0 {
				out = append(out, i*8+bit)
			}
		}
	}
	return out
}

func wantPages(t *testing.T, log []byte, size uint64, want ...uint64) {
	t.Helper()
	got := marked(log, size)
	if len(got) != len(want) {
		t.Fatalf("pages %v marked, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("pages %v marked, want %v", got, want)
		}
	}
}

func TestLogWriteSetsBitPageMod8OfBytePageDiv8(t *testing.T) {
	for _, p := range []uint64{0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 200} {
		d, log, _ := testLog(t, 32, 0, 4096)
		d.LogWrite(p*page+123, 1)
		if log[p/8] != 1<<(p%8) {
			t.Fatalf("page %d: byte %d = %#x, want %#x", p, p/8, log[p/8], 1<<(p%8))
		}
		wantPages(t, log, 32, p)
	}
}

func TestLogWriteRangeCrossingAPageBoundaryMarksBothPages(t *testing.T) {
	d, log, _ := testLog(t, 8, 0, 4096)
	d.LogWrite(3*page+page-1, 2) // the last byte of page 3, the first of 4
	wantPages(t, log, 8, 3, 4)
}

func TestLogWriteRangeEndingOnAPageBoundaryStopsThere(t *testing.T) {
	d, log, _ := testLog(t, 8, 0, 4096)
	d.LogWrite(2*page, 2*page) // pages 2 and 3 exactly
	wantPages(t, log, 8, 2, 3)
}

func TestLogWriteRangeOverManyWordsMarksEveryPage(t *testing.T) {
	d, log, _ := testLog(t, 16, 0, 4096)
	d.LogWrite(5*page, 90*page) // pages 5..94: three 32-bit words
	var want []uint64
	for p := uint64(5); p < 95; p++ {
		want = append(want, p)
	}
	wantPages(t, log, 16, want...)
}

func TestLogWriteKeepsBitsAlreadySet(t *testing.T) {
	d, log, _ := testLog(t, 8, 0, 4096)
	log[0] = 0x81 // the front-end has not read pages 0 and 7 yet
	d.LogWrite(3*page, 1)
	wantPages(t, log, 8, 0, 3, 7)
}

func TestLogWriteOfZeroBytesMarksNothing(t *testing.T) {
	d, log, _ := testLog(t, 8, 0, 4096)
	d.LogWrite(3*page, 0)
	wantPages(t, log, 8)
}

func TestLogWritePastTheLogMarksNothingAndCounts(t *testing.T) {
	d, log, outside := testLog(t, 1, 0, 4096) // pages 0..7
	d.LogWrite(8*page, 1)
	wantPages(t, log, 4096)
	if outside.Load() != 1 {
		t.Fatalf("%d marks counted outside, want 1", outside.Load())
	}
}

func TestLogWriteRunningPastTheLogMarksWhatItCovers(t *testing.T) {
	d, log, outside := testLog(t, 1, 0, 4096)
	d.LogWrite(7*page, 2*page) // pages 7 and 8; the log ends after 7
	wantPages(t, log, 4096, 7)
	if outside.Load() != 1 {
		t.Fatalf("%d marks counted outside, want 1", outside.Load())
	}
}

func TestLogWriteOfAWrappingRangeStaysInTheLog(t *testing.T) {
	d, log, outside := testLog(t, 1, 0, 4096)
	d.LogWrite(^uint64(0)-10, 100) // a hostile log_guest_addr near the top
	wantPages(t, log, 4096)
	if outside.Load() != 1 {
		t.Fatalf("%d marks counted outside, want 1", outside.Load())
	}
}

// TestLogWriteInLastPartialWordLeavesTheBytesAfterAlone: a 5-byte log's
// last byte shares its word with 3 bytes that are not the log's.
func TestLogWriteInLastPartialWordLeavesTheBytesAfterAlone(t *testing.T) {
	d, log, _ := testLog(t, 5, 0, 4096)
	log[5], log[6], log[7] = 0xa5, 0x5a, 0xff
	d.LogWrite(39*page, 1) // the log's last page: byte 4, bit 7
	if log[4] != 0x80 || log[5] != 0xa5 || log[6] != 0x5a || log[7] != 0xff {
		t.Fatalf("bytes 4..7 = %x, want 80a55aff", log[4:8])
	}
}

func TestLogAtAnOffsetIntoItsFileStartsThere(t *testing.T) {
	d, log, _ := testLog(t, 8, 4096+8, 3*4096) // offset past a page, not page aligned
	d.LogWrite(9*page, 1)
	wantPages(t, log, 8, 9)
}

func TestLogBytesForCoversTheLastPage(t *testing.T) {
	for _, tc := range []struct{ end, want uint64 }{
		{0, 0}, {1, 1}, {page, 1}, {8 * page, 1}, {8*page + 1, 2}, {1 << 30, 1 << 30 / page / 8},
	} {
		if got := logBytesFor(tc.end); got != tc.want {
			t.Errorf("logBytesFor(%#x) = %d, want %d", tc.end, got, tc.want)
		}
	}
}

// TestNewDirtyLogRefuses: each hostile or nonsensical description is
// refused with ErrBadLog, and maps nothing.
func TestNewDirtyLogRefuses(t *testing.T) {
	fdcheck.Check(t)
	fd, err := unix.MemfdCreate("test-log", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 8192); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		l      vhostuser.Log
		memEnd uint64
	}{
		{"size 0", vhostuser.Log{MmapSize: 0}, 0},
		{"size over the bound", vhostuser.Log{MmapSize: maxLogSize + 1}, 0},
		{"offset overflow", vhostuser.Log{MmapSize: 8, MmapOffset: ^uint64(0) - 3}, 0},
		{"offset unaligned", vhostuser.Log{MmapSize: 8, MmapOffset: 2}, 0},
		{"past the file", vhostuser.Log{MmapSize: 8192, MmapOffset: 4}, 0},
		{"smaller than the memory table", vhostuser.Log{MmapSize: 8}, 64*page + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := newDirtyLog(tc.l, fd, tc.memEnd, nil, nil)
			if !errors.Is(err, ErrBadLog) {
				d.unmap()
				t.Fatalf("newDirtyLog: %v, want ErrBadLog", err)
			}
		})
	}
}

// BenchmarkLogWrite is what logging adds per request while a migration
// runs: a 4 KiB read's data, and a 128 KiB one's.
func BenchmarkLogWrite(b *testing.B) {
	for _, n := range []uint64{4 << 10, 128 << 10} {
		b.Run(fmt.Sprint(n>>10, "KiB"), func(b *testing.B) {
			fd, err := unix.MemfdCreate("bench-log", unix.MFD_CLOEXEC)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.Ftruncate(fd, 1<<16); err != nil {
				b.Fatal(err)
			}
			d, err := newDirtyLog(vhostuser.Log{MmapSize: 1 << 16}, fd, 0, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer d.unmap()
			for i := 0; b.Loop(); i++ {
				d.LogWrite(uint64(i%1024)*n, n)
			}
		})
	}
}
