//go:build linux

package pmem

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// pattern fills n bytes that differ from their neighbours at every
// offset, so a copy that lands one byte off shows.
func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Sector copies come in every size a guest's io-vector can cut a sector
// into; both the REP MOVSB routine and Copy must move exactly those bytes.
func TestCopyMovesExactlyTheBytesOfEverySizeAndAlignment(t *testing.T) {
	t.Logf("REP MOVSB in use: %v (from %d bytes)", useRepMovsb, repMovsbMin)
	src := pattern(1, 70000)
	for _, n := range []int{0, 1, 7, 63, 511, 512, 2047, 2048, 2049, 4095, 4096, 4097, 65536, 65539} {
		for _, align := range []int{0, 1, 3, 8, 61} {
			for name, move := range map[string]func(d, s []byte){
				"Copy":          func(d, s []byte) { Copy(d, s) },
				"copyRepMovsb":  func(d, s []byte) { copyRepMovsb(d, s) },
				"CopyStreaming": func(d, s []byte) { CopyStreaming(d, s) },
			} {
				dst := pattern(2, n+align+16)
				want := bytes.Clone(dst)
				copy(want[align:align+n], src[align:align+n])
				move(dst[align:align+n], src[align:align+n])
				if !bytes.Equal(dst, want) {
					t.Fatalf("%s of %d bytes at alignment %d: destination differs (or bytes around it changed)", name, n, align)
				}
			}
		}
	}
}

func TestCopyStopsAtTheShorterSlice(t *testing.T) {
	long, short := pattern(3, 8192), make([]byte, 4096)
	if n := Copy(short, long); n != 4096 || !bytes.Equal(short, long[:4096]) {
		t.Fatalf("Copy into a shorter dst moved %d bytes", n)
	}
	dst := pattern(4, 8192)
	want := bytes.Clone(dst)
	copy(want, short)
	if n := Copy(dst, short); n != 4096 || !bytes.Equal(dst, want) {
		t.Fatalf("Copy from a shorter src moved %d bytes or touched the rest", n)
	}
}

// Copy never sees overlapping ranges from the BTT (guest memory and the
// mapping are distinct), but it promises the built-in copy's semantics.
func TestCopyOfOverlappingRangesMatchesTheBuiltinCopy(t *testing.T) {
	for _, shift := range []int{-4097, -100, -1, 1, 100, 4097} {
		buf := pattern(5, 3*8192)
		want := bytes.Clone(buf)
		const n, at = 8192, 8192
		copy(want[at+shift:at+shift+n], want[at:at+n])
		Copy(buf[at+shift:at+shift+n], buf[at:at+n])
		if !bytes.Equal(buf, want) {
			t.Fatalf("overlapping copy shifted by %d bytes differs from copy()", shift)
		}
	}
}

// A copy that needs to run backwards would need the direction flag set,
// and a fault in it would resume Go code with the flag still set: the REP
// MOVSB routine refuses it, untouched, and Copy hands it to copy().
func TestRepMovsbLeavesCopiesThatMustRunBackwardsToTheBuiltinCopy(t *testing.T) {
	buf := pattern(8, 3*8192)
	want := bytes.Clone(buf)
	if copyRepMovsb(buf[8192+1:2*8192+1], buf[8192:2*8192]) && useRepMovsb {
		t.Fatal("copyRepMovsb reported a backward copy as done")
	}
	if useRepMovsb && !bytes.Equal(buf, want) {
		t.Fatal("copyRepMovsb changed bytes of a copy it refused")
	}
	if !copyRepMovsb(buf[8192-1:2*8192-1], buf[8192:2*8192]) {
		t.Fatal("copyRepMovsb refused a copy that runs forwards")
	}
}

// The non-temporal copy takes only whole 64-byte lines to a 16-byte
// aligned destination, forwards; it refuses anything else untouched, and
// CopyStreaming then copies as Copy does.
func TestStreamingCopyTakesAlignedLinesAndLeavesTheRestToCopy(t *testing.T) {
	m := openScratch(t, DurabilityFlush)
	area, _ := m.Slice(0, 6*8192) // page-aligned
	src := pattern(9, 8192)
	for _, c := range []struct {
		name     string
		off, n   int
		streamed bool
	}{
		{"an aligned block", 0, 4096, true},
		{"aligned whole lines", 8192, 192, true},
		{"a destination 8 bytes off alignment", 16384 + 8, 4096, false},
		{"a length short of a whole line", 24576, 4096 - 16, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst := area[c.off : c.off+c.n]
			clear(dst)
			if got := copyNT(dst, src[:c.n]); got != c.streamed {
				t.Fatalf("copyNT took it: %v, want %v", got, c.streamed)
			}
			if !c.streamed && !bytes.Equal(dst, make([]byte, c.n)) {
				t.Fatal("copyNT changed bytes of a copy it refused")
			}
			if c.streamed && !bytes.Equal(dst, src[:c.n]) {
				t.Fatal("copyNT's copy differs")
			}
			clear(dst)
			if n := CopyStreaming(dst, src[:c.n]); n != c.n || !bytes.Equal(dst, src[:c.n]) {
				t.Fatalf("CopyStreaming moved %d bytes or moved them wrong", n)
			}
		})
	}
	// dst inside src: a forward copy would read what it had written.
	buf := area[32768 : 32768+3*4096]
	copy(buf, pattern(10, len(buf)))
	want := bytes.Clone(buf)
	if copyNT(buf[4096:], buf[:8192]) {
		t.Fatal("copyNT took a copy whose destination overlaps its source's tail")
	}
	if !bytes.Equal(buf, want) {
		t.Fatal("copyNT changed bytes of an overlapping copy it refused")
	}
	copy(want[4096:], want[:8192])
	CopyStreaming(buf[4096:], buf[:8192])
	if !bytes.Equal(buf, want) {
		t.Fatal("CopyStreaming of overlapping ranges differs from copy()")
	}
}

// benchMapping is a 512 MiB medium's mapping, far larger than the CPU
// caches, like a disk's, with every page faulted in before timing; closed
// when the benchmark ends.
func benchMapping(b *testing.B) []byte {
	b.Helper()
	m, err := Open(filepath.Join(b.TempDir(), "nvdimm.img"), Options{Create: true, Size: 512 << 20, Durability: DurabilityFlush})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	area, _ := m.Slice(0, m.Size())
	for i := 0; i < len(area); i += 4096 {
		area[i] = 1
	}
	return area
}

// BenchmarkCopy4KiB copies 4 KiB blocks between a mapping the size of a
// small disk and a 128 KiB request buffer, with the built-in copy and with
// Copy in the same run, and reports x_builtin (how many times faster Copy
// is). Blocks are scattered, as the BTT's free list scatters them.
func BenchmarkCopy4KiB(b *testing.B) {
	for _, dir := range []string{"into-mapping", "out-of-mapping"} {
		b.Run(dir, func(b *testing.B) {
			area := benchMapping(b)
			buf := pattern(6, 128<<10)
			blocks := len(area) / 4096
			run := func(move func(d, s []byte) int) time.Duration {
				start := time.Now()
				for i := range b.N {
					o := (i * 7919 % blocks) * 4096
					k := (i % 32) * 4096
					if dir == "into-mapping" {
						move(area[o:o+4096], buf[k:k+4096])
					} else {
						move(buf[k:k+4096], area[o:o+4096])
					}
				}
				return time.Since(start)
			}
			b.SetBytes(4096)
			b.ResetTimer()
			builtin := run(func(d, s []byte) int { return copy(d, s) })
			fast := run(Copy)
			if dir == "into-mapping" {
				streaming := run(CopyStreaming)
				b.ReportMetric(float64(streaming.Nanoseconds())/float64(b.N), "streaming-ns/op")
				b.ReportMetric(float64(fast)/float64(streaming), "streaming_x_copy")
			}
			b.StopTimer()
			b.ReportMetric(float64(builtin.Nanoseconds())/float64(b.N), "builtin-ns/op")
			b.ReportMetric(float64(fast.Nanoseconds())/float64(b.N), "copy-ns/op")
			b.ReportMetric(float64(builtin)/float64(fast), "x_builtin")
		})
	}
}

// Prefetch is a hint the BTT issues for blocks anywhere in the mapping,
// up to its very last byte; it must neither fault nor change a byte.
func TestPrefetchAtTheEdgesOfTheMappingChangesNothing(t *testing.T) {
	m := openScratch(t, DurabilityFlush)
	all, _ := m.Slice(0, m.Size())
	copy(all[len(all)-8192:], pattern(7, 8192))
	want := bytes.Clone(all[len(all)-8192:])
	for _, r := range []struct{ off, n int64 }{{m.Size() - 1, 1}, {m.Size() - 100, 100}, {m.Size() - 4096, 4096}, {0, 512}, {33, 0}} {
		b, err := m.Slice(r.off, r.n)
		if err != nil {
			t.Fatal(err)
		}
		Prefetch(b)
	}
	if !bytes.Equal(all[len(all)-8192:], want) {
		t.Fatal("Prefetch changed the mapping")
	}
}

// BenchmarkCopyStreamingBatch writes a 128 KiB request as 32 scattered
// 4 KiB blocks of a mapping, each published by a locked instruction as the
// BTT publishes a sector: "fenced" orders each block with CopyStreaming
// before its publish, "batch" copies 16 blocks with CopyStreamingUnordered,
// orders them once and then publishes the 16. It reports x_fenced, how
// many times faster the batch is, both measured in the same run.
func BenchmarkCopyStreamingBatch(b *testing.B) {
	area := benchMapping(b)
	buf := pattern(8, 128<<10)
	blocks := len(area) / 4096
	var published atomic.Uint64
	const batch = 16
	run := func(batched bool) time.Duration {
		start := time.Now()
		for i := range b.N {
			for k := 0; k < 32; k += batch {
				for j := k; j < k+batch; j++ {
					o := ((i*32 + j) * 7919 % blocks) * 4096
					if batched {
						CopyStreamingUnordered(area[o:o+4096], buf[j*4096:(j+1)*4096])
					} else {
						CopyStreaming(area[o:o+4096], buf[j*4096:(j+1)*4096])
						published.Add(1)
					}
				}
				if batched {
					OrderStreaming()
					for range batch {
						published.Add(1)
					}
				}
			}
		}
		return time.Since(start)
	}
	b.SetBytes(128 << 10)
	b.ResetTimer()
	fenced := run(false)
	batched := run(true)
	b.StopTimer()
	b.ReportMetric(float64(fenced.Nanoseconds())/float64(b.N), "fenced-ns/op")
	b.ReportMetric(float64(batched.Nanoseconds())/float64(b.N), "batch-ns/op")
	b.ReportMetric(float64(fenced)/float64(batched), "x_fenced")
}
