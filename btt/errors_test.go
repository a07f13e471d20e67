package btt

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// formattedMedium is a fresh 32 MiB BTT of 512-byte sectors, closed again,
// with the geometry of its first arena for tests that damage it.
func formattedMedium(t *testing.T) (*memMedium, ArenaInfo) {
	t.Helper()
	m, d := formatOpen(t, 32<<20, 512)
	a := d.Arenas()[0]
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return m, a
}

// An error names the package it comes from once, however many layers wrap
// it on the way out ("btt: read LBA 7: media error", not "btt: read LBA 7:
// btt: media error"), and errors.Is still finds the sentinel under the
// context.
func TestEveryErrorNamesThePackageOnceAndStillMatchesItsSentinel(t *testing.T) {
	sector := func() [][]byte { return [][]byte{make([]byte, 512)} }
	cases := []struct {
		name string
		run  func(t *testing.T) error
		want error
	}{
		{"a read past the capacity", func(t *testing.T) error {
			_, d := formatOpen(t, 32<<20, 512)
			return d.ReadV(d.NumSectors(), sector())
		}, ErrOutOfRange},
		{"a write past the capacity", func(t *testing.T) error {
			_, d := formatOpen(t, 32<<20, 512)
			return d.WriteV(d.NumSectors()-1, [][]byte{make([]byte, 1024)})
		}, ErrOutOfRange},
		{"write zeroes past the capacity", func(t *testing.T) error {
			_, d := formatOpen(t, 32<<20, 512)
			return d.WriteZeroes(d.NumSectors(), 1)
		}, ErrOutOfRange},
		{"a partial sector", func(t *testing.T) error {
			_, d := formatOpen(t, 32<<20, 512)
			return d.WriteV(0, [][]byte{make([]byte, 100)})
		}, ErrMisaligned},
		{"a read of a sector marked as a media error", func(t *testing.T) error {
			_, d := formatOpen(t, 32<<20, 512)
			storeWord32(d.arenaList()[0].mapArea, 7*MapEntrySize, 7|mapErrorFlag)
			return d.ReadV(7, sector())
		}, ErrMediaError},
		{"a write to a read-only device", func(t *testing.T) error {
			m, _ := formattedMedium(t)
			d, err := Open(m, Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			return d.WriteV(0, sector())
		}, ErrReadOnly},
		{"a read from a closed device", func(t *testing.T) error {
			_, d := formatOpen(t, 32<<20, 512)
			d.Close()
			return d.ReadV(0, sector())
		}, ErrClosed},
		{"a flush of a closed device", func(t *testing.T) error {
			_, d := formatOpen(t, 32<<20, 512)
			d.Close()
			return d.Flush()
		}, ErrClosed},
		{"a read through a released lane", func(t *testing.T) error {
			_, d := formatOpen(t, 32<<20, 512)
			ln, err := d.AcquireLane()
			if err != nil {
				t.Fatal(err)
			}
			ln.Release()
			return ln.ReadV(0, sector())
		}, ErrClosed},
		{"an open of a medium with no BTT", func(t *testing.T) error {
			_, err := Open(newMemMedium(32<<20), Options{})
			return err
		}, ErrNotFound},
		{"an open with both info blocks of an arena damaged", func(t *testing.T) error {
			m, a := formattedMedium(t)
			m.buf[a.Offset+200] ^= 0xa5
			m.buf[a.Info2Off+200] ^= 0xa5
			_, err := Open(m, Options{})
			return err
		}, ErrCorrupt},
		{"an open with a flog lane whose two entries share a sequence number", func(t *testing.T) error {
			m, a := formattedMedium(t)
			lane := a.LogOff + 3*FlogGroupSize
			e := FlogEntry{LBA: 3, OldMap: a.ExternalNLBA + 3, NewMap: a.ExternalNLBA + 3, Seq: 3}
			e.encode(m.buf[lane:])
			e.encode(m.buf[lane+FlogEntrySize:])
			_, err := Open(m, Options{})
			return err
		}, ErrCorrupt},
		{"a check of a medium with no BTT", func(t *testing.T) error {
			_, err := Check(newMemMedium(32<<20), CheckOptions{})
			return err
		}, ErrNotFound},
		{"a format with an unsupported sector size", func(t *testing.T) error {
			return Format(newMemMedium(32<<20), FormatOptions{LBASize: 1000})
		}, ErrInvalidArgument},
		{"a format of an unknown version", func(t *testing.T) error {
			return Format(newMemMedium(32<<20), FormatOptions{Version: Version{3, 0}})
		}, ErrInvalidArgument},
		{"a uuid that is not one", func(t *testing.T) error {
			_, err := ParseUUID("xyz")
			return err
		}, ErrInvalidArgument},
		{"an info block without a signature", func(t *testing.T) error {
			var in Info
			return in.UnmarshalBinary(make([]byte, InfoSize))
		}, errNoSignature},
		{"a flush whose medium was closed underneath", func(t *testing.T) error {
			path := filepath.Join(t.TempDir(), "nvdimm.img")
			// The failed close keeps the process log: in the test's dir.
			m, err := pmem.Open(path, pmem.Options{Create: true, Size: 32 << 20, ProcessLogDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if err := Format(m, FormatOptions{}); err != nil {
				t.Fatal(err)
			}
			d, err := Open(m, Options{})
			if err != nil {
				t.Fatal(err)
			}
			m.Close()
			return d.Flush()
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
			if !strings.HasPrefix(msg, "btt: ") {
				t.Errorf("%q does not start with the package prefix", msg)
			}
			for _, prefix := range []string{"btt: ", "pmem: "} {
				if n := strings.Count(msg, prefix); n > 1 {
					t.Errorf("%q names %q %d times", msg, prefix, n)
				}
			}
		})
	}
}

func TestAMediaErrorNamesTheLBAItWasReadAt(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 512)
	storeWord32(d.arenaList()[0].mapArea, 7*MapEntrySize, 7|mapErrorFlag)
	err := d.ReadV(6, [][]byte{make([]byte, 3*512)})
	if want := "btt: read LBA 7: media error"; err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}
