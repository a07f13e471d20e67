// Package tmpfstest gives a test a real, small filesystem to fill up: the
// way to make a host filesystem run out of space under an image (ENOSPC on
// fallocate, SIGBUS on a store into a hole) without faking either.
package tmpfstest

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// Mount mounts a tmpfs of size (as mount's size= option: "8m") on a fresh
// directory until the test ends, and returns the directory. Mounting needs
// root, as CI has; elsewhere the test is skipped with that reason.
func Mount(tb testing.TB, size string) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: mounts a small tmpfs to run out of space on")
	}
	dir := tb.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		tb.Fatalf("mount tmpfs: %v", err)
	}
	tb.Cleanup(func() {
		// Lazily: a test that failed half-way may still hold a file there.
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}
