//go:build linux

package pmem

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/internal/fdcheck"
)

func openWithLogDir(t *testing.T, path, dir string) *Medium {
	t.Helper()
	m, err := Open(path, Options{Create: true, Size: 32 << 20, ProcessLogDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAProcessLogKeptByCloseComesBackToTheNextOpen(t *testing.T) {
	fdcheck.Check(t)
	dir, path := t.TempDir(), filepath.Join(t.TempDir(), "disk.img")
	m := openWithLogDir(t, path, dir)
	log, err := m.ProcessLog(8192)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(log, make([]byte, 8192)) {
		t.Fatal("a new process log is not zeroes")
	}
	copy(log, "writes not yet committed")
	// Close without DropProcessLog is what a killed process leaves.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m = openWithLogDir(t, path, dir)
	defer m.Close()
	log, err = m.ProcessLog(8192)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(log, []byte("writes not yet committed")) {
		t.Fatalf("reopened log starts %q", log[:24])
	}
	if err := m.DropProcessLog(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.ProcessLogPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dropped log's file: %v, want it gone", err)
	}
}

func TestAProcessLogFromAnotherBootIsBlank(t *testing.T) {
	fdcheck.Check(t)
	dir, path := t.TempDir(), filepath.Join(t.TempDir(), "disk.img")
	m := openWithLogDir(t, path, dir)
	log, err := m.ProcessLog(4096)
	if err != nil {
		t.Fatal(err)
	}
	copy(log, "from the boot before")
	m.Close()

	real := bootID
	t.Cleanup(func() { bootID = real })
	bootID = func() (string, error) { return "00000000-0000-4000-8000-000000000000", nil }
	m = openWithLogDir(t, path, dir)
	defer m.Close()
	if log, err = m.ProcessLog(4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(log, make([]byte, 4096)) {
		t.Fatalf("after a reboot the log holds %q, want zeroes: the page cache it described is gone", log[:20])
	}
}

func TestAProcessLogOfAnotherSizeIsBlank(t *testing.T) {
	dir, path := t.TempDir(), filepath.Join(t.TempDir(), "disk.img")
	m := openWithLogDir(t, path, dir)
	log, _ := m.ProcessLog(4096)
	copy(log, "four KiB")
	m.Close()
	m = openWithLogDir(t, path, dir)
	defer m.Close()
	log, err := m.ProcessLog(8192)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(log, make([]byte, 8192)) {
		t.Fatal("a log asked with another size kept the old contents")
	}
}

func TestAProcessLogOthersCanWriteIsRefused(t *testing.T) {
	fdcheck.Check(t)
	dir, path := t.TempDir(), filepath.Join(t.TempDir(), "disk.img")
	m := openWithLogDir(t, path, dir)
	defer m.Close()
	if err := os.WriteFile(m.ProcessLogPath(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m.ProcessLogPath(), 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ProcessLog(4096); !errors.Is(err, ErrProcessLog) {
		t.Fatalf("ProcessLog over a world-writable file: %v, want ErrProcessLog", err)
	}
}

func TestAProcessLogThatIsASymlinkIsRefused(t *testing.T) {
	dir, path := t.TempDir(), filepath.Join(t.TempDir(), "disk.img")
	m := openWithLogDir(t, path, dir)
	defer m.Close()
	target := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.Symlink(target, m.ProcessLogPath()); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ProcessLog(4096); err == nil {
		t.Fatal("ProcessLog followed a symlink")
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the symlink's target was created: %v", err)
	}
}

func TestTwoMediaHaveTwoProcessLogs(t *testing.T) {
	dir := t.TempDir()
	a := openWithLogDir(t, filepath.Join(t.TempDir(), "a.img"), dir)
	defer a.Close()
	b := openWithLogDir(t, filepath.Join(t.TempDir(), "b.img"), dir)
	defer b.Close()
	if a.ProcessLogPath() == b.ProcessLogPath() {
		t.Fatalf("both media log to %s", a.ProcessLogPath())
	}
}
