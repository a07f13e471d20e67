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
// Each destination is started with -S, so that when the stream ends its
// RAM can be compared with the paused source's, page for page, before it
// runs (lostGuestWrites). Under TCG, QEMU 7.2 now and then leaves some of
// the guest's own writes out of the stream: the destination then holds
// stale pages, in the first runs seen mostly in the guest kernel's own
// data, and its guest oopses or stalls right after the switch-over. That
// happened with qemu-storage-daemon as the back-end too, and far more
// often on a loaded host: 3 runs in 8 of the nvblk test with `go test
// -race` of four other packages beside it, 0 in 20 on an idle one. The
// comparison tells the two apart: a differing page the back-end may have
// written (the ring's pages, a one-byte difference as of a status byte, a
// whole stream sector) fails the test at once; otherwise the destination
// is dropped and the guest resumed on its source, which must carry on, and
// migrated again, at most maxAttempts times (between hosts, where the
// source's disk is fenced by then, the paused source is migrated again
// instead). The first destination of each test is always dropped so, and
// the way back is taken in every run. `make test` runs the package on its
// own, after the rest.
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
