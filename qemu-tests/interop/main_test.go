// Package interop checks that nvblk and the Linux kernel agree on the BTT
// format, both ways: Linux lays out a BTT on an emulated NVDIMM and nvblk
// reads it; nvblk formats an image and Linux autodetects and uses it.
package interop

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var (
	kit *guest.Kit
	// nvblkBin is the CLI under test; cliErr says why it could not be built,
	// reported by each test when it first needs the CLI.
	nvblkBin string
	cliErr   error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nvblk-interop-")
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
	nvblkBin = filepath.Join(dir, "nvblk")
	if out, err := exec.Command("go", "build", "-o", nvblkBin, "github.com/nvblk/nvblk/cmd/nvblk").CombinedOutput(); err != nil {
		cliErr = fmt.Errorf("build nvblk CLI: %w\n%s", err, out)
	}
	code := m.Run()
	if guest.Keep() {
		fmt.Fprintf(os.Stderr, "kept kernel %s and base initramfs %s\n", kit.Kernel, kit.Initramfs)
	} else {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// nvblk runs the CLI with stdin and returns stdout; a non-zero exit is an
// error carrying stderr.
func nvblk(t *testing.T, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	cmd := exec.Command(nvblkBin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("nvblk %v: %w\n%s", args, err, stderr.String())
	}
	return stdout.Bytes(), nil
}
