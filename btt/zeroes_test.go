package btt

import (
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// One persist per arena the range touches, not one per sector: in the
// sync mode each persist is an msync, and a 2 GiB discard used to take
// minutes of them.
func TestWriteZeroesPersistsTheMapEntriesOfAnArenaTogether(t *testing.T) {
	m := twoArenas(t)
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	boundary := d.arenaList()[1].externalStart
	before := m.persists.Load()
	if err := d.WriteZeroes(boundary-1000, 2000); err != nil {
		t.Fatal(err)
	}
	if n := m.persists.Load() - before; n != 2 {
		t.Fatalf("write zeroes of 2000 sectors over two arenas: %d persists, want 2", n)
	}
	buf := make([]byte, 4096)
	if _, trim, _ := d.arenaList()[0].lookup(uint32(boundary - 1001)); trim {
		t.Fatal("write zeroes reached a sector before its range")
	}
	for _, lba := range []uint64{boundary - 1000, boundary - 1, boundary, boundary + 999} {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil {
			t.Fatal(err)
		}
		a, premap := d.locate(lba)
		if _, trim, _ := a.lookup(premap); !trim {
			t.Fatalf("LBA %d is not zeroed", lba)
		}
	}
	if _, trim, _ := d.arenaList()[1].lookup(1000); trim {
		t.Fatal("write zeroes reached a sector past its range")
	}
	mustBeConsistent(t, m)
}

// BenchmarkWriteZeroes64KiSectorsSync discards 64 Ki sectors of 512 bytes
// in the sync mode, where every persist is an msync(MS_SYNC).
func BenchmarkWriteZeroes64KiSectorsSync(b *testing.B) {
	const sectors = 64 << 10
	m, err := pmem.Open(filepath.Join(b.TempDir(), "zeroes.img"), pmem.Options{Create: true, Size: 48 << 20, Durability: pmem.DurabilitySync})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := Format(m, FormatOptions{LBASize: 512}); err != nil {
		b.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		b.Fatal(err)
	}
	a := d.arenaList()[0]
	for range b.N {
		b.StopTimer()
		// Back to the unwritten identity mapping, so every entry is
		// stored again.
		clear(a.mapArea[:sectors*MapEntrySize])
		if err := m.Flush(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := d.WriteZeroes(0, sectors); err != nil {
			b.Fatal(err)
		}
	}
}
