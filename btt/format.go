package btt

import (
	"crypto/rand"
	"fmt"
	"runtime/debug"
)

// FormatOptions choose the BTT Format writes.
type FormatOptions struct {
	// LBASize is the external sector size: one of SupportedLBASizes.
	// Zero means 4096.
	LBASize uint32
	// UUID of the BTT; zero means a random one.
	UUID [16]byte
	// ParentUUID is the namespace's uuid; zero (the kernel's value for a
	// label-less namespace) skips the kernel's parent check.
	ParentUUID [16]byte
	// Version is Version11 (the default, what the kernel writes on a
	// label-less namespace: the BTT starts 4 KiB in) or Version20 (starts at
	// 0, for namespaces labelled with the BTT2 claim class).
	Version Version
	// NFree is the number of free blocks per arena, which is the number of
	// lanes: zero means DefaultNFree, what the kernel writes; at most
	// MaxNFree. Open uses at most DefaultNFree lanes whatever it is.
	NFree uint32
}

// Format writes a new, empty BTT over the whole medium, the way the kernel's
// btt_meta_init does on first use: per arena, the map zeroed (identity), the
// flog zeroed with lane i's slot 0 holding {lba i, old = new =
// external_nlba+i, seq 1}, then the backup info block, then the info block.
// Old info blocks are erased first, so a crash mid-format leaves no BTT
// rather than a half-formatted one.
func Format(m Medium, opts FormatOptions) (err error) {
	// Format stores into every area it lays out: a medium truncated under
	// it, or a page the filesystem cannot supply, fails the format.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("btt: format: %w", faultError(faultAddr(r)))
		}
	}()
	m = orderedPersists(m)
	if opts.LBASize == 0 {
		opts.LBASize = 4096
	}
	if opts.Version == (Version{}) {
		opts.Version = Version11
	}
	if opts.Version != Version11 && opts.Version != Version20 {
		return fmt.Errorf("btt: format: %w: version %s (want 1.1 or 2.0)", ErrInvalidArgument, opts.Version)
	}
	if opts.UUID == ([16]byte{}) {
		if _, err := rand.Read(opts.UUID[:]); err != nil {
			return fmt.Errorf("btt: format: uuid: %w", err)
		}
		opts.UUID[6] = opts.UUID[6]&0x0f | 0x40 // version 4
		opts.UUID[8] = opts.UUID[8]&0x3f | 0x80 // RFC 4122 variant
	}
	base := opts.Version.initialOffset()
	if opts.NFree == 0 {
		opts.NFree = DefaultNFree
	}
	arenas, err := layoutArenas(base, m.Size()-base, opts.LBASize, opts.NFree)
	if err != nil {
		return fmt.Errorf("btt: format: %w", err)
	}
	for i := range arenas {
		g := &arenas[i]
		for _, off := range []int64{g.infoOff, g.info2Off} {
			if err := eraseInfo(m, off); err != nil {
				return fmt.Errorf("btt: format: arena %d: %w", i, err)
			}
		}
	}
	// An info block of the other version, left from an earlier format,
	// would be found by Open: a 1.1 block at 4 KiB lies in a 2.0 BTT's
	// data area and Open tries 1.1 first; a 2.0 block at 0 would be found
	// once the 1.1 one is gone. Erase it before any area is rewritten.
	other := Version20.initialOffset()
	if opts.Version == Version20 {
		other = Version11.initialOffset()
	}
	if b, err := m.Slice(other, InfoSize); err == nil && [16]byte(b[:16]) == Signature {
		if err := eraseInfo(m, other); err != nil {
			return fmt.Errorf("btt: format: %w", err)
		}
	}
	for i := range arenas {
		if err := formatArena(m, &arenas[i], opts); err != nil {
			return fmt.Errorf("btt: format: arena %d: %w", i, err)
		}
	}
	if err := m.Flush(); err != nil {
		return fmt.Errorf("btt: format: flush: %w", err)
	}
	return nil
}

// eraseInfo erases an info block signature first: a crash that tears the
// erase then leaves a block without a signature (no BTT there), never one
// with a signature and a bad checksum (a corrupt BTT).
func eraseInfo(m Medium, off int64) error {
	if err := zeroPersist(m, off, int64(len(Signature))); err != nil {
		return err
	}
	return zeroPersist(m, off, InfoSize)
}

func zeroPersist(m Medium, off, n int64) error {
	if err := m.Zero(off, n); err != nil {
		return err
	}
	return m.Persist(off, n)
}

func formatArena(m Medium, g *arenaGeometry, opts FormatOptions) error {
	if err := zeroPersist(m, g.mapOff, g.logOff-g.mapOff); err != nil {
		return fmt.Errorf("map: %w", err)
	}
	if err := m.Zero(g.logOff, g.info2Off-g.logOff); err != nil {
		return fmt.Errorf("flog: %w", err)
	}
	flog, err := m.Slice(g.logOff, int64(g.nfree)*FlogGroupSize)
	if err != nil {
		return fmt.Errorf("flog: %w", err)
	}
	for lane := uint32(0); lane < g.nfree; lane++ {
		e := FlogEntry{LBA: lane, OldMap: g.externalNLBA + lane, NewMap: g.externalNLBA + lane, Seq: 1}
		e.encode(flog[lane*FlogGroupSize:])
	}
	if err := m.Persist(g.logOff, g.info2Off-g.logOff); err != nil {
		return fmt.Errorf("flog: %w", err)
	}
	in := g.info(opts.UUID, opts.ParentUUID, opts.Version)
	for _, off := range []int64{g.info2Off, g.infoOff} {
		b, err := m.Slice(off, InfoSize)
		if err != nil {
			return fmt.Errorf("info block: %w", err)
		}
		in.encode(b)
		if err := m.Persist(off, InfoSize); err != nil {
			return fmt.Errorf("info block: %w", err)
		}
	}
	return nil
}

// orderedPersists makes each Persist of a deferred medium a Flush. Format's
// crash safety rests on its steps reaching the disk in order (signatures
// erased before anything is rewritten, the info block last); on a medium
// whose Persist waits for Flush, the page cache would write them back in
// any order. Formatting calls Persist a handful of times per arena.
func orderedPersists(m Medium) Medium {
	if dm, ok := m.(DeferredMedium); ok && dm.PersistDeferred() {
		return flushingPersists{m}
	}
	return m
}

type flushingPersists struct{ Medium }

func (f flushingPersists) Persist(off, n int64) error {
	if err := f.Medium.Persist(off, n); err != nil { // its range check
		return err
	}
	return f.Medium.Flush()
}
