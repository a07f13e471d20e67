package btt

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/pmem"
)

// A device in pmem's flush mode keeps the writes it has not committed in a
// process log on tmpfs. These tests "kill" the process by closing the
// medium under an open device, which is what a kill -9 leaves: the image's
// page cache and the log file, and no Close.

func flushModeImage(t *testing.T) (path, logDir string) {
	t.Helper()
	img := newMemMedium(32 << 20)
	if err := Format(img, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, img.buf, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, t.TempDir()
}

func openFlushMode(t *testing.T, path, logDir string) (*pmem.Medium, *Device, error) {
	t.Helper()
	m, err := pmem.Open(path, pmem.Options{Durability: pmem.DurabilityFlush, ProcessLogDir: logDir})
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, d, nil
}

func writeRange(t *testing.T, d *Device, from, to uint64, gen int) {
	t.Helper()
	for lba := from; lba < to; lba++ {
		if err := d.WriteV(lba, [][]byte{pattern(4096, lba, gen)}); err != nil {
			t.Fatal(err)
		}
	}
}

func expectRange(t *testing.T, d *Device, from, to uint64, gen int) {
	t.Helper()
	buf := make([]byte, 4096)
	for lba := from; lba < to; lba++ {
		want := make([]byte, 4096)
		if gen > 0 {
			want = pattern(4096, lba, gen)
		}
		if err := d.ReadV(lba, [][]byte{buf}); err != nil || !bytes.Equal(buf, want) {
			t.Fatalf("LBA %d: err %v, holds generation %d: %v", lba, err, gen, bytes.Equal(buf, want))
		}
	}
}

// killedWithPendingWrites writes 1..10, flushes, writes 5..15, and is
// killed.
func killedWithPendingWrites(t *testing.T, path, logDir string) {
	t.Helper()
	m, d, err := openFlushMode(t, path, logDir)
	if err != nil {
		t.Fatal(err)
	}
	writeRange(t, d, 1, 11, 1)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	writeRange(t, d, 5, 16, 2)
	if err := m.Close(); err != nil { // the kill: d is never closed
		t.Fatal(err)
	}
}

func TestWritesAKilledProcessCompletedComeBackFromItsProcessLog(t *testing.T) {
	fdcheck.Check(t)
	path, logDir := flushModeImage(t)
	killedWithPendingWrites(t, path, logDir)

	m, d, err := openFlushMode(t, path, logDir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if d.Replayed() != 11 {
		t.Fatalf("replayed %d writes from the log, want the 11 written after the flush", d.Replayed())
	}
	expectRange(t, d, 1, 5, 1)
	expectRange(t, d, 5, 16, 2)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.ProcessLogPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("process log after a clean close: %v, want it removed", err)
	}
	rep, err := Check(m, CheckOptions{})
	if err != nil || !rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep)
	}
}

// A reboot empties tmpfs: the image then holds what its last commit made
// durable, and is consistent.
func TestAfterARebootTheImageHoldsItsLastFlush(t *testing.T) {
	fdcheck.Check(t)
	path, logDir := flushModeImage(t)
	killedWithPendingWrites(t, path, logDir)

	m, d, err := openFlushMode(t, path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if d.Replayed() != 0 {
		t.Fatalf("replayed %d writes with no log", d.Replayed())
	}
	expectRange(t, d, 1, 11, 1)
	expectRange(t, d, 11, 16, 0)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep)
	}
}

// The image was written by another process (with no log of its own) after
// the kill: the old log's writes name blocks that have moved on.
func TestAProcessLogThatNoLongerMatchesTheImageIsRefusedAndChangesNothing(t *testing.T) {
	fdcheck.Check(t)
	path, logDir := flushModeImage(t)
	killedWithPendingWrites(t, path, logDir)
	m, d, err := openFlushMode(t, path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	writeRange(t, d, 1, 40, 3)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	if _, _, err := openFlushMode(t, path, logDir); !errors.Is(err, ErrPendingLog) {
		t.Fatalf("open with the stale log: %v, want ErrPendingLog", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("the refused open changed the image")
	}
}

// A device grown while serving keeps its pending log for every arena: a
// kill after writes to the new arena finds them in the log.
func TestWritesToAnArenaGrownOnlineComeBackAfterAKill(t *testing.T) {
	fdcheck.Check(t)
	path, logDir := flushModeImage(t)
	m, d, err := openFlushMode(t, path, logDir)
	if err != nil {
		t.Fatal(err)
	}
	writeRange(t, d, 1, 4, 1)
	if err := m.Extend(64 << 20); err != nil {
		t.Fatal(err)
	}
	res, err := d.Grow()
	if err != nil {
		t.Fatal(err)
	}
	first := res.SectorsBefore // the new arena's first LBA
	writeRange(t, d, first, first+8, 2)
	writeRange(t, d, 2, 3, 3)
	if err := m.Close(); err != nil { // the kill
		t.Fatal(err)
	}
	m, d, err = openFlushMode(t, path, logDir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if d.NumSectors() != res.SectorsAfter || d.Replayed() != 9 {
		t.Fatalf("reopened: %d sectors (want %d), %d writes replayed (want 9)", d.NumSectors(), res.SectorsAfter, d.Replayed())
	}
	expectRange(t, d, 1, 2, 1)
	expectRange(t, d, 2, 3, 3)
	expectRange(t, d, first, first+8, 2)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep)
	}
}
