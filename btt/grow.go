package btt

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// ErrNoRoomToGrow is returned by Grow when the medium past the last arena
// is too small for another one (ArenaMinSize).
var ErrNoRoomToGrow = errors.New("no room for another arena")

// GrowResult says what Grow did.
type GrowResult struct {
	// Arenas is the number of arenas appended.
	Arenas int
	// Sectors is the capacity before and after, in sectors.
	SectorsBefore, SectorsAfter uint64
	// Finished is set when Grow found an earlier grow that stopped part
	// way (an info block torn while being relinked, or the new arenas
	// linked from the primary info block and not yet from the backup) and
	// finished it.
	Finished bool
}

// Grow appends arenas to the BTT on m over the space past its last arena,
// after the caller made the medium larger (an image file extended, and
// mapped again). A BTT cannot change the arenas it has, but an arena's info
// block names the next one (nextoff), so a grown BTT is the old one with
// new arenas chained after it: the layout the kernel's create_arenas makes
// of a namespace that size, had the old arenas been the first ones laid.
//
// The order makes a crash at any point leave the old BTT or the grown one:
//
//  1. Each new arena is laid out and written as Format writes one (map,
//     flog, backup info block, info block), with any info block an earlier
//     attempt left there erased first. The old last arena's nextoff is
//     still zero, so nothing reaches the new arenas yet.
//  2. The old last arena's primary info block gets nextoff; it is made
//     durable. A crash tearing it leaves a block whose checksum fails, and
//     Open takes the arena's backup, which still ends the chain.
//  3. Its backup info block gets the same nextoff.
//
// A crash between 2 and 3 leaves a grown BTT whose last old arena's backup
// still says it is the last; Grow run again finishes that (Finished), as it
// rewrites a primary torn in step 2 from its backup and lays the arenas
// again. The device must not be open while Grow runs.
func Grow(m Medium) (res GrowResult, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("btt: grow: %w", faultError(faultAddr(r)))
		}
	}()
	m = orderedPersists(m)
	layout, err := discover(m)
	if err != nil {
		return res, fmt.Errorf("btt: grow: %w", err)
	}
	for _, a := range layout.arenas {
		res.SectorsBefore += uint64(a.ExternalNLBA)
	}
	res.SectorsAfter = res.SectorsBefore
	// An earlier grow that stopped part way: a primary torn while being
	// relinked (Open took the backup, which still ends the chain there:
	// write the primary back from it, and the arenas are laid again
	// below), or a chain linked by primary info blocks only (finish the
	// backups).
	for _, a := range layout.arenas {
		if a.fromInfo2 {
			if err := writeInfo(m, a.infoOff, a.Info); err != nil {
				return res, fmt.Errorf("btt: grow: arena at %#x: restoring the info block from its backup: %w", a.infoOff, err)
			}
			res.Finished = true
			continue
		}
		in2, err := readInfo(m, a.info2Off)
		if err == nil && in2.NextOff == a.NextOff {
			continue
		}
		if err := writeInfo(m, a.info2Off, a.Info); err != nil {
			return res, fmt.Errorf("btt: grow: arena at %#x: backup info block: %w", a.infoOff, err)
		}
		res.Finished = true
	}
	last := layout.arenas[len(layout.arenas)-1]
	end := last.info2Off + InfoSize // the last arena's own end, however large the medium is now
	if m.Size()-end < ArenaMinSize {
		if res.Finished {
			return res, nil
		}
		return res, fmt.Errorf("btt: grow: %w: %d bytes past the last arena (at %#x), need %d", ErrNoRoomToGrow, m.Size()-end, end, ArenaMinSize)
	}
	added, err := layoutArenas(end, m.Size()-end, last.ExternalLBASize, last.NFree)
	if err != nil {
		return res, fmt.Errorf("btt: grow: %w", err)
	}
	opts := FormatOptions{UUID: last.UUID, ParentUUID: last.ParentUUID, Version: layout.version}
	for i := range added {
		g := &added[i]
		for _, off := range []int64{g.infoOff, g.info2Off} {
			if err := eraseInfo(m, off); err != nil {
				return res, fmt.Errorf("btt: grow: arena %d: %w", len(layout.arenas)+i, err)
			}
		}
		if err := formatArena(m, g, opts); err != nil {
			return res, fmt.Errorf("btt: grow: arena %d: %w", len(layout.arenas)+i, err)
		}
		res.SectorsAfter += uint64(g.externalNLBA)
	}
	// Every new arena is durable (formatArena persisted its info block
	// last); only now does the chain reach them.
	linked := last.Info
	linked.NextOff = uint64(end - last.infoOff)
	for _, off := range []int64{last.infoOff, last.info2Off} {
		if err := writeInfo(m, off, linked); err != nil {
			return res, fmt.Errorf("btt: grow: linking arena at %#x: %w", last.infoOff, err)
		}
	}
	if err := m.Flush(); err != nil {
		return res, fmt.Errorf("btt: grow: flush: %w", err)
	}
	res.Arenas = len(added)
	return res, nil
}

// writeInfo encodes in at off and persists it.
func writeInfo(m Medium, off int64, in Info) error {
	b, err := m.Slice(off, InfoSize)
	if err != nil {
		return err
	}
	in.encode(b)
	return m.Persist(off, InfoSize)
}

// Grow makes the device larger while it serves I/O: the caller has made the
// medium larger (pmem.Medium.Extend), and Grow appends arenas over the new
// space as the package's Grow does, crash-safe, then adds them to the
// device. I/O goes on meanwhile; on a deferred medium writes wait while it
// commits and lays the pending log out for the new arenas. The new
// capacity is NumSectors once it returns; telling the guest is the
// caller's (a virtio config change).
func (d *Device) Grow() (res GrowResult, err error) {
	if d.closed.Load() {
		return res, fmt.Errorf("btt: grow: %w", ErrClosed)
	}
	if d.readOnly {
		return res, fmt.Errorf("btt: grow: %w", ErrReadOnly)
	}
	d.growMu.Lock()
	defer d.growMu.Unlock()
	df := d.def
	if df != nil {
		df.gate.Lock()
		defer df.gate.Unlock()
		// The pending log is laid out per arena: empty it first.
		if err := d.commitLocked(); err != nil {
			return res, fmt.Errorf("btt: grow: %w", err)
		}
	}
	if res, err = Grow(d.m); err != nil {
		return res, err
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("btt: grow: %w", faultError(faultAddr(r)))
		}
	}()
	layout, err := discover(d.m)
	if err != nil {
		return res, fmt.Errorf("btt: grow: %w", err)
	}
	cur := d.set.Load()
	arenas := append([]*arena(nil), cur.arenas...)
	nlba := cur.nlba
	lanes := cap(d.lanes)
	for i := len(cur.arenas); i < len(layout.arenas); i++ {
		a, err := newArena(d.m, i, layout.arenas[i], nlba, df != nil)
		if err != nil {
			return res, fmt.Errorf("btt: grow: arena %d: %w", i, err)
		}
		if err := a.scanFlog(a.keepFree, nil); err != nil {
			return res, fmt.Errorf("btt: grow: arena %d: %w", i, err)
		}
		if len(a.rtt) < lanes || df != nil && len(a.free) < df.lanes {
			return res, fmt.Errorf("btt: grow: arena %d: %w: %d free blocks, the device uses %d lanes", i, ErrCorrupt, a.nfree, lanes)
		}
		a.mapLocks = cur.arenas[0].mapLocks
		arenas = append(arenas, a)
		nlba += uint64(a.externalNLBA)
	}
	if df != nil {
		if err := d.layPendingLog(arenas, len(cur.arenas)); err != nil {
			return res, fmt.Errorf("btt: grow: %w", err)
		}
	}
	d.set.Store(&arenaSet{arenas: arenas, nlba: nlba})
	return res, nil
}
