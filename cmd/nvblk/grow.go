package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/pmem"
)

func init() {
	register(&command{name: "grow", summary: "make the BTT on FILE larger (extend the file, chain a new arena), or the disk a serve has open, under its guest",
		usage: "FILE --size NEW | --control-socket S --size NEW", run: runGrow})
	flagSets["grow"] = func() *flag.FlagSet { fs, _ := growFlags(); return fs }
}

type growArgs struct {
	size    sizeFlag
	control string
}

func growFlags() (*flag.FlagSet, *growArgs) {
	a := &growArgs{}
	fs := newFlagSet("grow")
	fs.Var(&a.size, "size", "the file's new size, e.g. 2G: at least 16 MiB more than the BTT spans now (required)")
	fs.StringVar(&a.control, "control-socket", "", "grow the disk of the serve answering on this control socket, while its guest runs: the guest is told the new capacity")
	return fs, a
}

// runGrow extends an image file that no serve has open and appends arenas
// (btt.Grow). The order keeps a crash harmless at every step: a longer file
// with the old BTT in it is still the old BTT, and Grow itself leaves the
// old BTT or the grown one.
func runGrow(env *environment, args []string) error {
	fs, a := growFlags()
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if a.size.n == 0 {
		return usagef("--size is required: the file's new size")
	}
	if a.control != "" {
		if len(pos) != 0 {
			return usagef("with --control-socket the serve names the image: unexpected %q", pos)
		}
		return growServed(env, a)
	}
	path, err := oneFile(pos)
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file: grow extends image files (a block device is as large as it is)", path)
	}
	if a.size.n < st.Size() {
		return usagef("%s has %d bytes, more than --size %d: a BTT cannot shrink", path, st.Size(), a.size.n)
	}
	// Open first: the claim refuses a file a serve has open, before the
	// file changes size under it.
	m, err := pmem.Open(path, pmem.Options{})
	if err != nil {
		return err
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		m.Close()
		return err
	}
	arenas := d.Arenas()
	last := arenas[len(arenas)-1]
	if end := last.Info2Off + btt.InfoSize; a.size.n-end < btt.ArenaMinSize {
		d.Close()
		m.Close()
		return usagef("--size %d leaves %d bytes past the BTT's end at %d: another arena needs %d", a.size.n, a.size.n-end, end, btt.ArenaMinSize)
	}
	// Recovery and any pending log committed, so Grow sees the image whole.
	if err := d.Close(); err != nil {
		m.Close()
		return err
	}
	if err := m.Close(); err != nil {
		return err
	}
	if err := os.Truncate(path, a.size.n); err != nil {
		return err
	}
	if m, err = pmem.Open(path, pmem.Options{}); err != nil {
		return err
	}
	defer m.Close()
	// The new space gets its blocks now, as format gives them, so no
	// guest write later meets a hole the filesystem has no room for.
	if err := m.Allocate(); err != nil {
		return err
	}
	res, err := btt.Grow(m)
	if errors.Is(err, btt.ErrNoRoomToGrow) {
		return fmt.Errorf("%s: %w (the file is now %d bytes; give a --size at least 16 MiB past the BTT's end)", path, err, a.size.n)
	}
	if err != nil {
		return err
	}
	if d, err = btt.Open(m, btt.Options{ReadOnly: true}); err != nil {
		return fmt.Errorf("reopening after grow: %w", err)
	}
	fmt.Fprintf(env.stdout, "grew %s: %d -> %d sectors of %d bytes (%d arena(s) added, %d in all)\n",
		path, res.SectorsBefore, res.SectorsAfter, d.LBASize(), res.Arenas, len(d.Arenas()))
	return nil
}

// growTimeout bounds an online grow: allocating the new space and writing
// its arena's map take time on a large image.
const growTimeout = 10 * time.Minute

// growServed asks a running serve to grow its disk (the control socket's
// grow command), which tells the guest.
func growServed(env *environment, a *growArgs) error {
	r, err := control.Do(a.control, control.Request{Cmd: "grow", Size: a.size.n}, growTimeout)
	if err != nil {
		return err
	}
	g := r.Grown
	if g == nil {
		return fmt.Errorf("grow: the serve answered no result")
	}
	fmt.Fprintf(env.stdout, "grew the served disk: %d -> %d sectors (%d arena(s) added); %d front-end(s) told\n",
		g.SectorsBefore, g.SectorsAfter, g.ArenasAdded, g.FrontEndsTold)
	return nil
}
