//go:build linux

package pmem_test

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// An error names the package once, the path and the operation after it, and
// errors.Is still finds the sentinel or errno underneath.
func TestEveryErrorNamesThePackageOnceAndStillMatchesItsCause(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T) error
		want error
	}{
		{"an open of a missing file", func(t *testing.T) error {
			_, err := pmem.Open(filepath.Join(t.TempDir(), "missing.img"), pmem.Options{})
			return err
		}, fs.ErrNotExist},
		{"an open of a file below the minimum", func(t *testing.T) error {
			_, err := pmem.Open(writeFileOfSize(t, 1<<20), pmem.Options{})
			return err
		}, pmem.ErrTooSmall},
		{"a create asked to be read-only", func(t *testing.T) error {
			_, err := pmem.Open(filepath.Join(t.TempDir(), "new.img"), pmem.Options{Create: true, ReadOnly: true, Size: testSize})
			return err
		}, pmem.ErrInvalidOptions},
		{"an open of a character device that is not devdax", func(t *testing.T) error {
			_, err := pmem.Open("/dev/null", pmem.Options{})
			return err
		}, pmem.ErrUnsupportedMedium},
		{"a second open of a claimed file", func(t *testing.T) error {
			_, path := createMedium(t, pmem.Options{})
			_, err := pmem.Open(path, pmem.Options{})
			return err
		}, pmem.ErrBusy},
		{"a slice past the end", func(t *testing.T) error {
			m, _ := createMedium(t, pmem.Options{})
			_, err := m.Slice(testSize-1, 2)
			return err
		}, pmem.ErrOutOfRange},
		{"a persist of a read-only medium", func(t *testing.T) error {
			m, err := pmem.Open(writeFileOfSize(t, testSize), pmem.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			return m.Persist(0, 8)
		}, pmem.ErrReadOnly},
		{"a slice of a closed medium", func(t *testing.T) error {
			m, _ := createMedium(t, pmem.Options{})
			m.Close()
			_, err := m.Slice(0, 8)
			return err
		}, pmem.ErrClosed},
		{"a flush of a closed medium", func(t *testing.T) error {
			m, _ := createMedium(t, pmem.Options{})
			m.Close()
			return m.Flush()
		}, pmem.ErrClosed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.run(t)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want one matching %q", err, c.want)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.HasPrefix(msg, "pmem: ") || strings.Count(msg, "pmem: ") != 1 {
				t.Errorf("%q should start with the package prefix and name it only there", msg)
			}
		})
	}
}
