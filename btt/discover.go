package btt

import (
	"errors"
	"fmt"
)

// discoveredArena is an arena's info block as found on media.
type discoveredArena struct {
	Info
	arenaGeometry
	fromInfo2 bool  // the primary was damaged; this came from the backup
	infoErr   error // why the primary was rejected, when fromInfo2
}

type discoveredLayout struct {
	version Version
	arenas  []discoveredArena
}

// readInfo reads and decodes the info block at off.
func readInfo(m Medium, off int64) (Info, error) {
	var in Info
	if off < 0 || off+InfoSize > m.Size() {
		return in, fmt.Errorf("info block at %#x: past the end of the medium", off)
	}
	b, err := m.Slice(off, InfoSize)
	if err != nil {
		return in, err
	}
	return in, in.decode(b)
}

// discover walks the arena chain. For each arena it trusts the primary info
// block when its signature and checksum hold, else the backup at the end of
// the arena, where the kernel's layout puts it (the arena spans the smaller
// of the remaining space and ArenaMaxSize).
func discover(m Medium) (*discoveredLayout, error) {
	size := m.Size()
	var firstErr error
	for _, v := range []Version{Version11, Version20} {
		layout, err := discoverVersion(m, size, v)
		if err == nil {
			return layout, nil
		}
		if firstErr == nil || (errors.Is(firstErr, ErrNotFound) && !errors.Is(err, ErrNotFound)) {
			firstErr = err
		}
	}
	return nil, firstErr
}

func discoverVersion(m Medium, size int64, v Version) (*discoveredLayout, error) {
	base := v.initialOffset()
	layout := &discoveredLayout{version: v}
	off := base
	for i := 0; ; i++ {
		remaining := size - off
		if remaining < ArenaMinSize {
			if i == 0 {
				return nil, fmt.Errorf("%w: %d bytes is smaller than the %d-byte minimum", ErrNotFound, size, ArenaMinSize+base)
			}
			return nil, fmt.Errorf("%w: arena %d at %#x: the chain points past the medium", ErrCorrupt, i, off)
		}
		da, err := discoverArena(m, off, remaining, size)
		if err != nil {
			if i == 0 && errors.Is(err, ErrNotFound) {
				return nil, err
			}
			return nil, fmt.Errorf("arena %d at %#x: %w", i, off, err)
		}
		if da.Version != v {
			if i == 0 {
				return nil, fmt.Errorf("%w: info block at %#x says version %s, the layout there is %s", ErrNotFound, off, da.Version, v)
			}
			return nil, fmt.Errorf("%w: arena %d version %s, arena 0 version %s", ErrCorrupt, i, da.Version, v)
		}
		if i > 0 {
			first := layout.arenas[0]
			if da.ExternalLBASize != first.ExternalLBASize || da.UUID != first.UUID {
				return nil, fmt.Errorf("%w: arena %d (uuid %x, lbasize %d) does not match arena 0 (uuid %x, lbasize %d)",
					ErrCorrupt, i, da.UUID, da.ExternalLBASize, first.UUID, first.ExternalLBASize)
			}
		}
		layout.arenas = append(layout.arenas, da)
		if da.NextOff == 0 {
			return layout, nil
		}
		off += int64(da.NextOff)
		if i > 1<<14 {
			return nil, fmt.Errorf("%w: arena chain too long", ErrCorrupt)
		}
	}
}

func discoverArena(m Medium, off, remaining, size int64) (discoveredArena, error) {
	in, primaryErr := readInfo(m, off)
	if primaryErr == nil {
		g, err := geometryFromInfo(&in, off, size)
		if err == nil {
			return discoveredArena{Info: in, arenaGeometry: g}, nil
		}
		primaryErr = err
	}
	span := min(remaining, ArenaMaxSize)
	span -= span % pageSize
	backupOff := off + span - InfoSize
	if da, ok := backupAt(m, off, backupOff, size); ok {
		da.infoErr = primaryErr
		return da, nil
	}
	// An arena Grow chained more arenas after does not span the rest of
	// the medium: its backup is where its own end was. A damaged primary
	// with no backup at the computed place (a grow torn while relinking
	// it) has it on a page boundary below; look for it there.
	if !errors.Is(primaryErr, errNoSignature) {
		for cand := backupOff - pageSize; cand >= off+ArenaMinSize-InfoSize; cand -= pageSize {
			if b, err := m.Slice(cand, int64(len(Signature))); err != nil || [16]byte(b) != Signature {
				continue
			}
			if da, ok := backupAt(m, off, cand, size); ok {
				da.infoErr = primaryErr
				return da, nil
			}
		}
	}
	if errors.Is(primaryErr, errNoSignature) {
		return discoveredArena{}, fmt.Errorf("%w: no info block at %#x", ErrNotFound, off)
	}
	if errors.Is(primaryErr, ErrCorrupt) {
		// A bad geometry already says "metadata corrupt"; say it once.
		return discoveredArena{}, fmt.Errorf("info block at %#x: %w; backup at %#x unusable", off, primaryErr, backupOff)
	}
	return discoveredArena{}, fmt.Errorf("%w: info block at %#x: %v; backup at %#x unusable", ErrCorrupt, off, primaryErr, backupOff)
}

// backupAt reads a backup info block at backupOff for the arena at off:
// valid, and placing its own info2 at backupOff.
func backupAt(m Medium, off, backupOff, size int64) (discoveredArena, bool) {
	in2, err := readInfo(m, backupOff)
	if err != nil {
		return discoveredArena{}, false
	}
	g, err := geometryFromInfo(&in2, off, size)
	if err != nil || g.info2Off != backupOff {
		return discoveredArena{}, false
	}
	return discoveredArena{Info: in2, arenaGeometry: g, fromInfo2: true}, true
}
