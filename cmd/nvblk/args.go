package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/pmem"
)

var errHelp = errors.New("help requested")

// flagSets builds each command's flag set, for parsing and for help.
var flagSets = map[string]func() *flag.FlagSet{}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseInterspersed parses flags that may come before or after positional
// arguments (`nvblk format FILE --size 1G`), as users of ndctl expect.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, usagef("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// parseSize reads a byte count with an optional binary unit: 512, 64M,
// 1G, 1GiB, 2T.
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive number with an optional K, M, G or T suffix", s)
	}
	return n * mult, nil
}

// sizeFlag is a flag.Value for sizes.
type sizeFlag struct{ n int64 }

func (f *sizeFlag) String() string {
	if f == nil || f.n == 0 {
		return ""
	}
	return strconv.FormatInt(f.n, 10)
}

func (f *sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	f.n = n
	return err
}

func parseDurability(s string) (pmem.Durability, error) {
	switch s {
	case "auto", "":
		return pmem.DurabilityAuto, nil
	case "flush":
		return pmem.DurabilityFlush, nil
	case "sync":
		return pmem.DurabilitySync, nil
	case "dax":
		return pmem.DurabilityDAX, nil
	}
	return 0, usagef("--durability %q: want auto, flush, sync or dax", s)
}

const durabilityHelp = "durability mode: auto (dax on DAX mappings, else flush), flush (atomic across process crashes; " +
	"durable on flush), sync (msync every step: power-loss atomic, slow), dax (cache-line write-back; needs devdax or fsdax+MAP_SYNC)"

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// fileArg parses an image command's arguments: flags anywhere, and exactly
// one FILE.
func fileArg(fs *flag.FlagSet, args []string) (string, error) {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return "", err
	}
	return oneFile(pos)
}

func oneFile(pos []string) (string, error) {
	switch len(pos) {
	case 0:
		return "", usagef("missing FILE")
	case 1:
		return pos[0], nil
	}
	return "", usagef("unexpected arguments after FILE: %q", pos[1:])
}
