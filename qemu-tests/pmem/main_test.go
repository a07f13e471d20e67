// Package pmem runs nvblk where it is meant to run, on persistent memory:
// inside a Linux guest whose emulated NVDIMM ndctl turns into a devdax
// device or an fsdax ext4 mounted with -o dax, nvblk formats, serves and
// checks its BTT there. A vhost-user front-end in the same guest writes
// and verifies data through serve's socket, nvblk bench and conformance
// drive it, serve's start-up line must name the medium exactly (kind,
// MAP_SYNC, durability dax, the cache-line write-back), and an nvblk
// write SIGKILLed part way must leave every sector old or new.
package pmem

import (
	"os"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "nvblk-pmem-")) }
