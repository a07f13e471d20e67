package guest_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var kit *guest.Kit

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nvblk-guest-kit-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kit, err = guest.NewKit(dir)
	if err != nil {
		// Not a skip: a box without QEMU or a kernel cannot vouch for nvblk.
		fmt.Fprintf(os.Stderr, "FAIL: guest kit: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if guest.Keep() {
		fmt.Fprintf(os.Stderr, "kept kernel %s and base initramfs %s\n", kit.Kernel, kit.Initramfs)
	} else {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}
