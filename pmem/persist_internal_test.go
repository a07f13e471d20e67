//go:build linux

package pmem

import (
	"path/filepath"
	"runtime"
	"testing"
)

func openScratch(tb testing.TB, mode Durability) *Medium {
	tb.Helper()
	m, err := Open(filepath.Join(tb.TempDir(), "nvdimm.img"), Options{Create: true, Size: 32 << 20, Durability: mode})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// forceCacheLineWriteBack runs the DAX persist path on a page-cache mapping: the instructions
// execute and must not fault, though on the page cache they make nothing durable.
func forceCacheLineWriteBack(m *Medium) { m.durability = DurabilityDAX }

func TestCacheLineWriteBackRunsOnUnalignedRangesAndKeepsData(t *testing.T) {
	t.Logf("write-back instruction: %s, stride %d", writeBackName, cacheLineStride())
	m := openScratch(t, DurabilityFlush)
	forceCacheLineWriteBack(m)
	for _, r := range []struct{ off, n int64 }{{0, 1}, {63, 2}, {4095, 4097}, {1, 0}, {m.Size() - 1, 1}, {0, m.Size()}} {
		b, _ := m.Slice(r.off, r.n)
		for i := range b {
			b[i] = byte(i)
		}
		if err := m.Persist(r.off, r.n); err != nil {
			t.Fatalf("Persist(%d, %d): %v", r.off, r.n, err)
		}
		for i := range b {
			if b[i] != byte(i) {
				t.Fatalf("byte %d changed after write-back", r.off+int64(i))
			}
		}
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
}

// WriteBackInstruction names the instruction Persist runs in DAX mode and nothing in the
// page-cache modes, so serve's start-up log cannot claim a write-back that does not happen.
func TestWriteBackInstructionNamesWhatPersistRuns(t *testing.T) {
	for _, mode := range []Durability{DurabilityFlush, DurabilitySync} {
		if got := openScratch(t, mode).WriteBackInstruction(); got != "" {
			t.Errorf("%s: WriteBackInstruction() = %q, want \"\" (no cache-line write-back)", mode, got)
		}
	}
	m := openScratch(t, DurabilityFlush)
	forceCacheLineWriteBack(m)
	got := m.WriteBackInstruction()
	want := map[string]bool{"msync": true}
	if runtime.GOARCH == "amd64" {
		want = map[string]bool{"clwb": true, "clflushopt": true, "clflush": true}
	}
	if !want[got] || got != writeBackName {
		t.Errorf("DAX on %s: WriteBackInstruction() = %q, want the chosen one (%q), one of %v", runtime.GOARCH, got, writeBackName, want)
	}
}

func TestZeroClearsTheBytesWhenTheFilesystemCannotPunch(t *testing.T) {
	m := openScratch(t, DurabilityFlush)
	m.punchHoles.Store(false)
	b, _ := m.Slice(0, 3<<20)
	for i := range b {
		b[i] = 0xa5
	}
	if err := m.Zero(100, 2<<20); err != nil {
		t.Fatal(err)
	}
	for i, c := range b {
		inside := i >= 100 && i < 100+2<<20
		if (c == 0) != inside {
			t.Fatalf("byte %d = %#x after Zero(100, 2 MiB)", i, c)
		}
	}
}

func BenchmarkPersist(b *testing.B) {
	modes := []struct {
		name  string
		mode  Durability
		force bool
	}{
		{"flush", DurabilityFlush, false},
		{"sync", DurabilitySync, false},
		// On real pmem this is the DAX mode; here it times the write-back instructions on a
		// page-cache mapping, which is what they cost per 4 KiB.
		{"dax-instructions", DurabilityFlush, true},
	}
	for _, bm := range modes {
		b.Run(bm.name, func(b *testing.B) {
			m := openScratch(b, bm.mode)
			if bm.force {
				forceCacheLineWriteBack(m)
			}
			buf, _ := m.Slice(0, 1<<20)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := range b.N {
				off := int64(i%256) * 4096
				buf[off]++
				if err := m.Persist(off, 4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
