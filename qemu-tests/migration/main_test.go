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
// And between hosts (crosshost_test.go): two nvblk serves with images of
// their own, the disk moved by `nvblk move` into `serve --incoming` over
// NBD in the same window as QEMU moves the guest.
//
// None of it is in `make test` yet; `make test-migration` runs it (the
// build tag migration). QEMU 7.2 under TCG now and then hands a
// destination guest corrupt memory (a kernel oops right after the
// switch-over) or leaves it stalled, whichever back-end serves the disk:
// counted here, qemu-storage-daemon 1 run in 10 with -cpu qemu64 and 1 in 8
// with -cpu max, nvblk 0 in 20 and 1 in 10. A CI run of `make test` then
// saw one more nvblk stall on a destination: its guest stopped writing
// with every request it had made completed (avail.idx == used.idx), as if
// a completion's interrupt was lost; that one is not understood yet.
package migration

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

// migrationCPU is the guests' -cpu: a named model, not max, which is what
// the corrupt destinations above were seen with most.
const migrationCPU = "qemu64"

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
