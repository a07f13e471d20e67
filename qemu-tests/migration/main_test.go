//go:build migration

// Package migration live-migrates a running guest, twice, while it
// writes to its vhost-user-blk disk: QEMU's precopy migration (QMP
// migrate) from a source to a destination QEMU started with -incoming on
// the same back-end, then back to a third. The guest streams
// sequence-stamped O_DSYNC writes, reads each one back at once and, after
// the second migration, every sector it wrote: it must see no I/O error
// and no sector that does not hold its last write, and its writes must
// carry on on each destination. The back-end's image then holds every
// last write too, and for nvblk passes `nvblk check`.
//
// Two back-ends: `nvblk serve`, one process on one socket that both QEMUs
// of a migration connect to; and qemu-storage-daemon, two daemons
// exporting one raw file with file locking off (its export takes one
// front-end at a time), the destination connecting to the other daemon:
// the same test passing against QEMU's own back-end checks the test.
//
// It is not in `make test`: under load, about one run in eight ends with
// the guest on a destination stalled or its own memory corrupt (the agent's
// Go runtime finds a bad heap span after the second migration), with
// either back-end. `make test-migration` runs it (the build tag
// migration), on its own.
package migration

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "nvblk-migration-")) }

var (
	initrdOnce sync.Once
	initrd     string
	initrdErr  error
)

// initramfs is the guests' base archive: the agent, virtio-blk, and the
// ACPI button driver, without which the guest leaves the power button's
// event disabled and never counts a press (the signal that ends the
// stream). Small, so that each machine boots quickly.
func initramfs(t *testing.T) string {
	t.Helper()
	initrdOnce.Do(func() {
		initrd = filepath.Join(suite.Dir(), "migration.cpio")
		initrdErr = suite.Kit.MinimalInitramfs(initrd, "virtio_pci", "virtio_blk", "button")
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return initrd
}
