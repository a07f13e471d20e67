package guest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// Suite is what one test binary's guests share: the kit, and the nvblk CLI
// built from this tree.
type Suite struct {
	Kit *Kit
	dir string

	cliOnce sync.Once
	cli     string
	cliErr  error

	guestCLIOnce sync.Once
	guestCLI     string
	guestCLIErr  error
}

// Dir is the suite's temporary directory, where the kit lives; it is
// removed after the tests unless Keep says otherwise.
func (s *Suite) Dir() string { return s.dir }

// Main builds the kit in a new temporary directory named after prefix,
// runs the tests and returns their exit code, for TestMain to os.Exit
// with. The directory goes unless Keep asks otherwise.
func (s *Suite) Main(m *testing.M, prefix string) int {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s.dir = dir
	s.Kit, err = NewKit(dir)
	if err != nil {
		// Not a skip: a box without QEMU or a kernel cannot vouch for nvblk.
		fmt.Fprintf(os.Stderr, "FAIL: guest kit: %v\n", err)
		os.RemoveAll(dir)
		return 1
	}
	code := m.Run()
	if Keep() {
		fmt.Fprintf(os.Stderr, "kept kernel %s and base initramfs %s\n", s.Kit.Kernel, s.Kit.Initramfs)
	} else {
		os.RemoveAll(dir)
	}
	return code
}

// CLI is the path of the nvblk CLI under test. It is built on first use, so
// that the harness's own tests do not wait for it; a failed build fails
// every test that needs it.
func (s *Suite) CLI(t testing.TB) string {
	t.Helper()
	s.cliOnce.Do(func() {
		s.cli = filepath.Join(s.dir, "nvblk")
		if out, err := exec.Command("go", "build", "-o", s.cli, "github.com/nvblk/nvblk/cmd/nvblk").CombinedOutput(); err != nil {
			s.cliErr = fmt.Errorf("build nvblk CLI: %w\n%s", err, out)
		}
	})
	if s.cliErr != nil {
		t.Fatal(s.cliErr)
	}
	return s.cli
}

// GuestCLI is the nvblk CLI built to run inside a guest: static
// (CGO_ENABLED=0), as the guest has no C library for it, and without the
// caller's GOFLAGS (-race needs cgo). Built on first use.
func (s *Suite) GuestCLI(t testing.TB) string {
	t.Helper()
	s.guestCLIOnce.Do(func() {
		s.guestCLI = filepath.Join(s.dir, "nvblk-static")
		build := exec.Command("go", "build", "-trimpath", "-o", s.guestCLI, "github.com/nvblk/nvblk/cmd/nvblk")
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-buildvcs=false")
		if out, err := build.CombinedOutput(); err != nil {
			s.guestCLIErr = fmt.Errorf("build static nvblk CLI: %w\n%s", err, out)
		}
	})
	if s.guestCLIErr != nil {
		t.Fatal(s.guestCLIErr)
	}
	return s.guestCLI
}

// NVBLK runs the CLI with stdin and returns stdout; a non-zero exit is an
// error carrying stderr.
func (s *Suite) NVBLK(t testing.TB, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(s.CLI(t), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("nvblk %v: %w\n%s", args, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// Image is a freshly formatted BTT image and what nvblk info says of it.
type Image struct {
	Path       string
	SectorSize int    `json:"sector_size"`
	NumSectors uint64 `json:"num_sectors"`
	UUID       string `json:"uuid"`
}

// FormatImage formats an image of size (as nvblk format takes it) in the
// test's temporary directory.
func (s *Suite) FormatImage(t testing.TB, size string, sectorSize int) Image {
	t.Helper()
	img := Image{Path: filepath.Join(t.TempDir(), "nvblk.img")}
	if _, err := s.NVBLK(t, nil, "format", img.Path, "--size", size, "--sector-size", strconv.Itoa(sectorSize)); err != nil {
		t.Fatal(err)
	}
	out, err := s.NVBLK(t, nil, "info", img.Path, "--json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &img); err != nil {
		t.Fatalf("nvblk info --json: %v\n%s", err, out)
	}
	if img.SectorSize != sectorSize || img.NumSectors == 0 {
		t.Fatalf("nvblk info after format: %+v, want %d-byte sectors", img, sectorSize)
	}
	return img
}

// ReadImage is `nvblk read` of count sectors from lba: the host's view of
// the disk, through the BTT map.
func (s *Suite) ReadImage(t testing.TB, img Image, lba uint64, count int) []byte {
	t.Helper()
	out, err := s.NVBLK(t, nil, "read", img.Path, "--lba", strconv.FormatUint(lba, 10), "--count", strconv.Itoa(count))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != count*img.SectorSize {
		t.Fatalf("nvblk read %d sectors from lba %d: %d bytes, want %d", count, lba, len(out), count*img.SectorSize)
	}
	return out
}

// CheckImage fails the test unless `nvblk check` passes on the image.
func (s *Suite) CheckImage(t testing.TB, path string) {
	t.Helper()
	if out, err := s.NVBLK(t, nil, "check", path); err != nil {
		t.Fatalf("nvblk check after the guest: %v\n%s", err, out)
	}
}
