//go:build migration

package migration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// TestGuestWritesThroughTwoLiveMigrationsOnQemuStorageDaemon runs the
// migrations on qemu-storage-daemon: its vhost-user-blk export serves one
// front-end at a time, so two daemons export the same raw file (locking
// off; both go through the host's page cache, so each sees the other's
// writes), the first QEMU and the third on daemon A, the second on B.
func TestGuestWritesThroughTwoLiveMigrationsOnQemuStorageDaemon(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(raw, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(raw, 64<<20); err != nil {
		t.Fatal(err)
	}
	a := storageDaemon(t, "qemu-storage-daemon A", raw, filepath.Join(dir, "qsd-a.sock"))
	b := storageDaemon(t, "qemu-storage-daemon B", raw, filepath.Join(dir, "qsd-b.sock"))

	ws := migrateUnderWrites(t, [3]string{a.Socket, b.Socket, a.Socket})

	for _, d := range []*guest.Backend{a, b} {
		d.StopClean(t)
	}
	img, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	checkRings(t, "the raw file", ws, img[:ringSectors*sectorSize])
}

// storageDaemon starts a qemu-storage-daemon exporting raw on sock, and
// returns once it listens.
func storageDaemon(t *testing.T, name, raw, sock string) *guest.Backend {
	t.Helper()
	const qsd = "/usr/bin/qemu-storage-daemon"
	if _, err := os.Stat(qsd); err != nil {
		t.Fatalf("qemu-storage-daemon not installed (%v): run scripts/install-deps.sh", err)
	}
	// locking=off: the other daemon holds the file too.
	cmd := exec.Command(qsd,
		"--blockdev", "driver=file,node-name=f,locking=off,filename="+raw,
		"--export", "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path="+sock+",writable=on,num-queues=1")
	return guest.StartBackend(t, name, sock, cmd, "")
}
