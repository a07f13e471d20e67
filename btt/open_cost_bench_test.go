package btt_test

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// BenchmarkOpenLargeImage measures what Open costs on a freshly formatted
// 64 GiB sparse image: the read-write Open reads every map entry to check
// that no block has two owners, the read-only one does not. The image
// stays sparse (a few MiB on disk), so its map reads as holes: the figure
// is the scan's cost with the map in the page cache, not a disk's.
// "written" then rewrites every map entry (LBAs swapped in pairs, a valid
// BTT with no identity entry left), the worst case for the scan.
//
//	go test -run '^$' -bench OpenLargeImage -benchtime 3x ./btt/
func BenchmarkOpenLargeImage(b *testing.B) {
	const size = 64 << 30
	dir := b.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || int64(st.Bavail)*int64(st.Bsize) < 1<<30 {
		b.Skipf("needs 1 GiB free under %s for a sparse %d GiB image (statfs: %v)", dir, size>>30, err)
	}
	for _, lbasize := range []uint32{4096, 512} {
		path := filepath.Join(dir, fmt.Sprintf("open-%d.img", lbasize))
		m, err := pmem.Open(path, pmem.Options{Create: true, Size: size, Durability: pmem.DurabilityFlush})
		if err != nil {
			b.Fatal(err)
		}
		if err := btt.Format(m, btt.FormatOptions{LBASize: lbasize}); err != nil {
			b.Fatal(err)
		}
		for _, state := range []string{"fresh", "written"} {
			if state == "written" {
				swapEveryPair(b, m)
			}
			for _, ro := range []bool{false, true} {
				b.Run(fmt.Sprintf("lbasize=%d/%s/readonly=%v", lbasize, state, ro), func(b *testing.B) {
					for range b.N {
						d, err := btt.Open(m, btt.Options{ReadOnly: ro})
						if err != nil {
							b.Fatal(err)
						}
						b.StopTimer()
						if err := d.Close(); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
				})
			}
		}
		if err := m.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// swapEveryPair maps LBA 2k to block 2k+1 and back, in every arena.
func swapEveryPair(b *testing.B, m *pmem.Medium) {
	d, err := btt.Open(m, btt.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range d.Arenas() {
		entries, err := m.Slice(a.MapOff, int64(a.ExternalNLBA)*btt.MapEntrySize)
		if err != nil {
			b.Fatal(err)
		}
		for lba := uint32(0); lba+1 < a.ExternalNLBA; lba += 2 {
			binary.LittleEndian.PutUint32(entries[lba*btt.MapEntrySize:], (lba+1)|0xc0000000)
			binary.LittleEndian.PutUint32(entries[(lba+1)*btt.MapEntrySize:], lba|0xc0000000)
		}
	}
	d.Close()
}
