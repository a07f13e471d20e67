package btt

import "fmt"

// arenaGeometry is where one arena's areas lie, as absolute medium offsets,
// computed the way the kernel's alloc_arena/create_arenas lay out a new BTT.
type arenaGeometry struct {
	infoOff, dataOff, mapOff, logOff, info2Off int64
	nextOff                                    int64 // relative to infoOff; 0 for the last arena
	size                                       int64
	externalNLBA, internalNLBA                 uint32
	externalLBASize, internalLBASize           uint32
	nfree                                      uint32
}

// layoutArenas splits rawSize bytes starting at medium offset base into
// arenas of at most ArenaMaxSize, each with nfree free blocks (lanes). A
// tail smaller than ArenaMinSize is left unused, as the kernel leaves it.
func layoutArenas(base, rawSize int64, lbasize, nfree uint32) ([]arenaGeometry, error) {
	if !supportedLBASize(lbasize) {
		return nil, fmt.Errorf("%w: sector size %d (supported: %v)", ErrInvalidArgument, lbasize, SupportedLBASizes)
	}
	if nfree == 0 || nfree > MaxNFree {
		return nil, fmt.Errorf("%w: nfree %d (want 1 to %d)", ErrInvalidArgument, nfree, MaxNFree)
	}
	if rawSize < ArenaMinSize {
		return nil, fmt.Errorf("%w: %d bytes available for the BTT, need at least %d", ErrInvalidArgument, rawSize, ArenaMinSize)
	}
	var arenas []arenaGeometry
	remaining, off := rawSize, base
	for remaining > 0 {
		size := min(remaining, int64(ArenaMaxSize))
		remaining -= size
		if size < ArenaMinSize {
			break
		}
		g := newArenaGeometry(off, size, lbasize, nfree)
		if g.internalNLBA <= nfree {
			return nil, fmt.Errorf("%w: nfree %d leaves no sectors in an arena of %d bytes", ErrInvalidArgument, nfree, size)
		}
		if remaining >= ArenaMinSize {
			g.nextOff = size
		}
		arenas = append(arenas, g)
		off += size
	}
	return arenas, nil
}

func newArenaGeometry(off, size int64, lbasize, nfree uint32) arenaGeometry {
	g := arenaGeometry{
		size:            size,
		externalLBASize: lbasize,
		internalLBASize: internalLBASize(lbasize),
		nfree:           nfree,
	}
	available := size - size%pageSize
	available -= 2 * pageSize // info and info2
	logSize := roundUp(int64(g.nfree)*FlogGroupSize, pageSize)
	available -= logSize
	// Split what is left between map and data: each internal block costs its
	// size plus a map entry; one page is kept back for the map's rounding.
	g.internalNLBA = uint32((available - pageSize) / int64(g.internalLBASize+MapEntrySize))
	g.externalNLBA = g.internalNLBA - g.nfree
	mapSize := roundUp(int64(g.externalNLBA)*MapEntrySize, pageSize)
	dataSize := available - mapSize

	g.infoOff = off
	g.dataOff = off + pageSize
	g.mapOff = g.dataOff + dataSize
	g.logOff = g.mapOff + mapSize
	g.info2Off = g.logOff + logSize
	return g
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// info returns the info block describing the arena.
func (g *arenaGeometry) info(uuid, parent [16]byte, v Version) Info {
	return Info{
		Signature:       Signature,
		UUID:            uuid,
		ParentUUID:      parent,
		Version:         v,
		ExternalLBASize: g.externalLBASize,
		ExternalNLBA:    g.externalNLBA,
		InternalLBASize: g.internalLBASize,
		InternalNLBA:    g.internalNLBA,
		NFree:           g.nfree,
		InfoSize:        InfoSize,
		NextOff:         uint64(g.nextOff),
		DataOff:         uint64(g.dataOff - g.infoOff),
		MapOff:          uint64(g.mapOff - g.infoOff),
		LogOff:          uint64(g.logOff - g.infoOff),
		Info2Off:        uint64(g.info2Off - g.infoOff),
	}
}

// geometryFromInfo checks an info block read at medium offset infoOff against
// itself and the medium size, and returns the arena it describes. Every value
// is untrusted: a foreign or damaged block must give an error, never an
// out-of-range access later.
func geometryFromInfo(in *Info, infoOff, mediumSize int64) (arenaGeometry, error) {
	var g arenaGeometry
	bad := func(format string, a ...any) (arenaGeometry, error) {
		return g, fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, a...)...)
	}
	if !supportedLBASize(in.ExternalLBASize) {
		return bad("external_lbasize %d not supported", in.ExternalLBASize)
	}
	if in.InternalLBASize < in.ExternalLBASize || in.InternalLBASize%internalLBAAlign != 0 || in.InternalLBASize > 1<<16 {
		return bad("internal_lbasize %d for external %d", in.InternalLBASize, in.ExternalLBASize)
	}
	if in.NFree == 0 || in.NFree > MaxNFree || in.InternalNLBA < in.NFree || in.InternalNLBA-in.NFree != in.ExternalNLBA {
		return bad("internal_nlba %d, external_nlba %d, nfree %d do not agree", in.InternalNLBA, in.ExternalNLBA, in.NFree)
	}
	if in.InternalNLBA > maxPostmapLBA {
		return bad("internal_nlba %d exceeds the map's block range", in.InternalNLBA)
	}
	const limit = ArenaMaxSize
	for _, o := range []uint64{in.DataOff, in.MapOff, in.LogOff, in.Info2Off, in.NextOff} {
		if o > limit || o%512 != 0 {
			return bad("area offset %#x out of range or unaligned", o)
		}
	}
	dataOff, mapOff, logOff, info2Off := int64(in.DataOff), int64(in.MapOff), int64(in.LogOff), int64(in.Info2Off)
	if dataOff < InfoSize || mapOff-dataOff < int64(in.InternalNLBA)*int64(in.InternalLBASize) ||
		logOff-mapOff < int64(in.ExternalNLBA)*MapEntrySize ||
		info2Off-logOff < int64(in.NFree)*FlogGroupSize {
		return bad("areas overlap (data %#x, map %#x, log %#x, info2 %#x)", dataOff, mapOff, logOff, info2Off)
	}
	size := info2Off + InfoSize
	if in.NextOff != 0 {
		if int64(in.NextOff) < size {
			return bad("nextoff %#x inside the arena (ends at %#x)", in.NextOff, size)
		}
		size = int64(in.NextOff)
	}
	// No writer makes a smaller arena (the kernel's create_arenas leaves a
	// tail under ArenaMinSize unused), and what Open keeps per arena is
	// bounded by the medium only because arenas are this large: a crafted
	// chain of tiny arenas is refused before anything is allocated for it.
	if size < ArenaMinSize {
		return bad("arena of %#x bytes, smaller than the %#x-byte minimum", size, ArenaMinSize)
	}
	if infoOff+info2Off+InfoSize > mediumSize {
		return bad("arena at %#x ends at %#x, past the medium's %#x bytes", infoOff, infoOff+info2Off+InfoSize, mediumSize)
	}
	g = arenaGeometry{
		infoOff: infoOff, dataOff: infoOff + dataOff, mapOff: infoOff + mapOff,
		logOff: infoOff + logOff, info2Off: infoOff + info2Off,
		nextOff: int64(in.NextOff), size: size,
		externalNLBA: in.ExternalNLBA, internalNLBA: in.InternalNLBA,
		externalLBASize: in.ExternalLBASize, internalLBASize: in.InternalLBASize,
		nfree: in.NFree,
	}
	return g, nil
}
