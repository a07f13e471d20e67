package guest_test

import (
	"os"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "nvblk-guest-kit-")) }
