// Package interop checks that nvblk and the Linux kernel agree on the BTT
// format, both ways: Linux lays out a BTT on an emulated NVDIMM and nvblk
// reads it; nvblk formats an image and Linux autodetects and uses it.
package interop

import (
	"os"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "nvblk-interop-")) }
