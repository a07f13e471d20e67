//go:build linux

package pmem

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/internal/fdcheck"
)

func TestExtendKeepsOldSlicesAndMapsTheNewSpace(t *testing.T) {
	fdcheck.Check(t)
	path := filepath.Join(t.TempDir(), "disk.img")
	m, err := Open(path, Options{Create: true, Size: 32 << 20, ProcessLogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	old, err := m.Slice(4096, 16)
	if err != nil {
		t.Fatal(err)
	}
	copy(old, "before the grow.")
	if err := m.Extend(48 << 20); err != nil {
		t.Fatal(err)
	}
	if m.Size() != 48<<20 {
		t.Fatalf("size %d after Extend", m.Size())
	}
	tail, err := m.Slice(40<<20, 16)
	if err != nil {
		t.Fatal(err)
	}
	copy(tail, "in the new space")
	same, _ := m.Slice(4096, 16)
	copy(old, "written through ")
	if !bytes.Equal(same, []byte("written through ")) {
		t.Fatalf("a slice from before Extend and one from after see different bytes: %q", same)
	}
	if err := m.Persist(40<<20, 16); err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Slice(48<<20, 1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("past the new end: %v", err)
	}
	if err := m.Extend(40 << 20); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("Extend to a smaller size: %v", err)
	}
}
