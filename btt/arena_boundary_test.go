package btt_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// A namespace over 512 GiB needs a second arena. The file is sparse: format
// punches the maps and writes only the flogs and info blocks.
func TestSparseFileOver512GiBSpansTwoArenas(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.img")
	const size = 512<<30 + 64<<20
	m, err := pmem.Open(path, pmem.Options{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := btt.Format(m, btt.FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	arenas := d.Arenas()
	if len(arenas) != 2 {
		t.Fatalf("%d arenas, want 2", len(arenas))
	}
	first, second := arenas[0], arenas[1]
	if first.Offset != 4096 || first.NextOff != btt.ArenaMaxSize || second.Offset != 4096+btt.ArenaMaxSize || second.NextOff != 0 {
		t.Fatalf("arena chain: %+v / %+v", first, second)
	}
	if second.ExternalStart != uint64(first.ExternalNLBA) || d.NumSectors() != uint64(first.ExternalNLBA)+uint64(second.ExternalNLBA) {
		t.Fatalf("LBA ranges: arena 1 starts at %d, first has %d; total %d", second.ExternalStart, first.ExternalNLBA, d.NumSectors())
	}
	// Write the last sector of arena 0 and the first of arena 1 in one call.
	boundary := second.ExternalStart
	want := make([]byte, 2*4096)
	for i := range want {
		want[i] = byte(i*7 + i>>12)
	}
	if err := d.WriteV(boundary-1, [][]byte{want}); err != nil {
		t.Fatal(err)
	}
	last := d.NumSectors() - 1
	if err := d.WriteV(last, [][]byte{want[:4096]}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = btt.Open(m, btt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2*4096)
	if err := d.ReadV(boundary-1, [][]byte{got}); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("across the arena boundary: err %v, equal %v", err, bytes.Equal(got, want))
	}
	if err := d.ReadV(last, [][]byte{got[:4096]}); err != nil || !bytes.Equal(got[:4096], want[:4096]) {
		t.Fatalf("last sector: err %v", err)
	}
	rep, err := btt.Check(m, btt.CheckOptions{})
	if err != nil || !rep.Consistent || rep.MapEntries != d.NumSectors() {
		t.Fatalf("check: %v, %d entries of %d, problems %+v", err, rep.MapEntries, d.NumSectors(), rep.Problems)
	}
}
