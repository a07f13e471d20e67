package btt

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Faults. The medium is a shared mapping, and a store or load in it can
// fault where a read(2) or write(2) would have returned an error: the image
// file was truncated under the device (SIGBUS past its end), a page of a
// sparse image could not be allocated because the filesystem is full
// (SIGBUS on the store), or the memory is poisoned (SIGBUS from a machine
// check). The caller's io-vector is guest memory, which the front-end may
// shrink or unmap. By default Go ends the process on such a fault.
//
// Every entry point that touches the mapping or an io-vector therefore
// runs with debug.SetPanicOnFault(true), which makes the runtime panic
// instead, and recovers that panic (and only that one: any other panic is
// raised again) into an error. The cost is paid once per request, not per
// sector. What the error means for the BTT depends on where the fault hit:
//
//   - the copy of a write's data (free block or buffer): nothing but the
//     free block changed, so the write is simply abandoned;
//   - the copy of a read's data out of a block: the sector's map entry gets
//     the error flag, as the kernel's btt_read_pg sets it on a media error,
//     and the sector reads as ErrMediaError until it is rewritten;
//   - a write's flog or map store, once the commit has begun: the arena
//     fails (ErrArenaFailed) and refuses writes, because its in-memory free
//     list may name a live block; reopening the device recovers it;
//   - any other load or store (a map lookup, a trim): that I/O fails.
//
// A read's read tracking slot is cleared in every case, so no writer waits
// on a read that will never finish.

// faultAddr returns the address of the memory fault r reports, r being
// the value recovered from a panic. Under SetPanicOnFault the runtime
// panics on a fault with a runtime.Error that has an Addr method; any
// other panic is a bug, not a fault, and is raised again.
func faultAddr(r any) uintptr {
	if re, ok := r.(runtime.Error); ok {
		if f, ok := re.(interface{ Addr() uintptr }); ok {
			return f.Addr()
		}
	}
	panic(r)
}

// faultError is the error of a fault at addr in the medium, for the entry
// points (Open, Check, Format) that touch nothing else.
func faultError(addr uintptr) error {
	return fmt.Errorf("%w at %#x", ErrMediaFault, addr)
}

// The windows of an arena a fault can hit.
const (
	areaData = "data area"
	areaMap  = "map"
	areaFlog = "flog"
)

// faultSite is where a fault hit: a window of an arena, or (a == nil)
// none of the medium's, which on the I/O path is the caller's buffer.
type faultSite struct {
	addr uintptr
	a    *arena
	area string
	off  int // into the window
}

func (d *Device) locateFault(addr uintptr) faultSite {
	for _, a := range d.arenaList() {
		for _, w := range []struct {
			area string
			b    []byte
		}{{areaData, a.dataArea}, {areaMap, a.mapArea}, {areaFlog, a.flogArea}} {
			if off, ok := offsetIn(w.b, addr); ok {
				return faultSite{addr: addr, a: a, area: w.area, off: off}
			}
		}
	}
	return faultSite{addr: addr}
}

func (s faultSite) err() error {
	switch {
	case s.a == nil:
		return fmt.Errorf("%w at %#x", ErrBufferFault, s.addr)
	case s.area == areaData:
		return fmt.Errorf("%w at %#x: arena %d, data block %d", ErrMediaFault, s.addr, s.a.index, s.off/int(s.a.internalLBASize))
	}
	return fmt.Errorf("%w at %#x: arena %d, %s", ErrMediaFault, s.addr, s.a.index, s.area)
}

// readFault ends a read of the sector at lba that faulted at addr, while
// lane l was a reader of held (nil if none yet).
func (d *Device) readFault(addr uintptr, l *lane, held *arena, lba uint64) error {
	if held != nil {
		held.endRead(l)
	}
	s := d.locateFault(addr)
	err := s.err()
	if s.area == areaData {
		if a, premap := d.locate(lba); a == s.a {
			if d.markMediaError(a, premap, uint32(s.off/int(a.internalLBASize))) {
				err = fmt.Errorf("%w; the sector reads as a media error until it is rewritten", err)
			}
		}
	}
	return fmt.Errorf("btt: read LBA %d: %w", lba, err)
}

// markMediaError sets the error flag on premap's entry if it still maps to
// block, the block whose read faulted, and reports whether it did. A write
// clears the flag (the sector moves to a new block); a trim clears it too.
// Nothing is marked on a read-only device, and a map that faults as well
// is left as it is: the read's own error says enough.
func (d *Device) markMediaError(a *arena, premap, block uint32) (marked bool) {
	if d.readOnly {
		return false
	}
	if d.def != nil {
		// A pending entry may be the one to flag (lock order: gate, then
		// map lock).
		d.def.gate.RLock()
		defer d.def.gate.RUnlock()
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			faultAddr(r)
			marked = false
		}
	}()
	mu := a.mapLock(premap)
	mu.Lock()
	defer mu.Unlock()
	// Under the map lock, and only if no writer moved the sector since the
	// read looked it up: flagging the new block would lose the write.
	if b, trim, mediaErr := a.lookup(premap); b != block || trim || mediaErr {
		return false
	}
	// The block stays the sector's: the flag alone changes, so the
	// arena's accounting of blocks is untouched.
	if a.pendingUpdate(premap, block|mapErrorFlag) {
		return true
	}
	return a.writeMap(d.m, premap, block|mapErrorFlag) == nil
}

// writeFault ends a write of the sector at lba through lane l that faulted
// at addr. Before the commit began it costs only the write; after, it
// fails the arena being committed.
func (d *Device) writeFault(addr uintptr, l *lane, lba uint64) error {
	err := d.locateFault(addr).err()
	if l.taken.from != nil {
		// A copy into a clean block, or a publish, faulted: nothing names
		// the blocks not yet published.
		l.taken.giveBackRest()
	}
	if a := l.committing; a != nil {
		l.committing = nil
		err = a.fail(err)
	}
	return fmt.Errorf("btt: write LBA %d: %w", lba, err)
}

// Failed returns why writes are refused in an arena that failed (an error
// wrapping ErrArenaFailed), or nil when every arena takes writes.
func (d *Device) Failed() error {
	for _, a := range d.arenaList() {
		if f := a.failed.Load(); f != nil {
			return fmt.Errorf("btt: %w", *f)
		}
	}
	return nil
}
