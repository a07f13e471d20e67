package btt

import (
	"bytes"
	"fmt"
	"runtime/debug"
)

// ArenaInfo describes one arena, with offsets absolute in the medium. JSON
// names follow the kernel's debugfs and ndctl where they exist.
type ArenaInfo struct {
	Index           int    `json:"arena"`
	Offset          int64  `json:"infooff"`
	Size            int64  `json:"size"`
	ExternalStart   uint64 `json:"external_lba_start"`
	ExternalNLBA    uint32 `json:"external_nlba"`
	InternalNLBA    uint32 `json:"internal_nlba"`
	ExternalLBASize uint32 `json:"external_lbasize"`
	InternalLBASize uint32 `json:"internal_lbasize"`
	NFree           uint32 `json:"nfree"`
	DataOff         int64  `json:"dataoff"`
	MapOff          int64  `json:"mapoff"`
	LogOff          int64  `json:"logoff"`
	Info2Off        int64  `json:"info2off"`
	NextOff         int64  `json:"nextoff"`
	Flags           uint32 `json:"flags"`
	LogIndex        [2]int `json:"log_index"`
}

func (a *arena) describe() ArenaInfo {
	return ArenaInfo{
		Index: a.index, Offset: a.infoOff, Size: a.size, ExternalStart: a.externalStart,
		ExternalNLBA: a.externalNLBA, InternalNLBA: a.internalNLBA,
		ExternalLBASize: a.externalLBASize, InternalLBASize: a.internalLBASize, NFree: a.nfree,
		DataOff: a.dataOff, MapOff: a.mapOff, LogOff: a.logOff, Info2Off: a.info2Off, NextOff: a.nextOff,
		Flags: a.info.Flags, LogIndex: a.logIndex,
	}
}

// Problem is one inconsistency Check found.
type Problem struct {
	Arena      int    `json:"arena"`
	Kind       string `json:"kind"`
	Message    string `json:"message"`
	Repairable bool   `json:"repairable"`
	Repaired   bool   `json:"repaired"`
}

// Problem kinds.
const (
	ProblemInfo     = "info"      // the primary info block is damaged
	ProblemInfo2    = "info2"     // the backup info block is damaged or differs
	ProblemFlog     = "flog"      // a flog group is inconsistent
	ProblemMap      = "map"       // a map entry points outside the arena
	ProblemBlocks   = "blocks"    // a block is used twice, or not at all
	ProblemRecovery = "recovery"  // a write the flog holds but the map misses
	ProblemErrFlag  = "errorflag" // the arena carries the error flag
)

// CheckOptions control Check.
type CheckOptions struct {
	// Repair rewrites what can be rewritten safely, as ndctl
	// check-namespace --repair does: a damaged info block from its good
	// twin, and pending flog moves into the map. Nothing else is written.
	Repair bool
	// Progress, if set, is called with (done, total) map entries checked.
	Progress func(done, total uint64)
}

// CheckReport is Check's result.
type CheckReport struct {
	Version     string      `json:"version"`
	UUID        string      `json:"uuid"`
	LBASize     uint32      `json:"sector_size"`
	NumSectors  uint64      `json:"size_sectors"`
	Arenas      []ArenaInfo `json:"arenas"`
	Problems    []Problem   `json:"problems"`
	Consistent  bool        `json:"consistent"`
	Repaired    int         `json:"repaired"`
	MapEntries  uint64      `json:"map_entries_checked"`
	FlogEntries int         `json:"flog_lanes_checked"`
}

// Check verifies a BTT the way ndctl's check-namespace does: both info
// blocks of every arena (checksums, agreement), every flog group, every map
// entry in range, and that every postmap block is used exactly once across
// the map and the free list. It writes nothing unless opts.Repair.
func Check(m Medium, opts CheckOptions) (rep *CheckReport, err error) {
	// A medium truncated under Check fails it, not the process.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			rep, err = nil, fmt.Errorf("btt: check: %w", faultError(faultAddr(r)))
		}
	}()
	layout, err := discover(m)
	if err != nil {
		return nil, fmt.Errorf("btt: %w", err)
	}
	r := &CheckReport{Version: layout.version.String()}
	first := layout.arenas[0]
	r.UUID = FormatUUID(first.UUID)
	r.LBASize = first.ExternalLBASize
	var totalMap uint64
	for _, da := range layout.arenas {
		totalMap += uint64(da.ExternalNLBA)
	}
	var done uint64
	var start uint64
	for i, da := range layout.arenas {
		checkInfoPair(m, i, da, opts.Repair, r)
		a, err := newArena(m, i, da, start, false)
		if err != nil {
			r.add(Problem{Arena: i, Kind: ProblemFlog, Message: err.Error()})
			start += uint64(da.ExternalNLBA)
			continue
		}
		r.Arenas = append(r.Arenas, a.describe())
		if a.info.Flags&InfoFlagError != 0 {
			r.add(Problem{Arena: i, Kind: ProblemErrFlag, Message: "arena has the error flag set: the kernel and nvblk open it read-only"})
		}
		checkArenaBlocks(m, a, opts, r, &done, totalMap)
		start += uint64(a.externalNLBA)
	}
	r.NumSectors = start
	r.Consistent = true
	for _, p := range r.Problems {
		if !p.Repaired {
			r.Consistent = false
		}
	}
	return r, nil
}

func (r *CheckReport) add(p Problem) {
	r.Problems = append(r.Problems, p)
	if p.Repaired {
		r.Repaired++
	}
}

// checkInfoPair compares an arena's two info blocks and, with repair,
// rewrites the damaged one from the good one.
func checkInfoPair(m Medium, i int, da discoveredArena, repair bool, r *CheckReport) {
	good, err := m.Slice(da.infoOff, InfoSize)
	if da.fromInfo2 {
		good, err = m.Slice(da.info2Off, InfoSize)
	}
	if err != nil {
		r.add(Problem{Arena: i, Kind: ProblemInfo, Message: err.Error()})
		return
	}
	if da.fromInfo2 {
		p := Problem{Arena: i, Kind: ProblemInfo, Message: fmt.Sprintf("info block damaged (%v); backup info2 is good", da.infoErr), Repairable: true}
		if repair {
			p.Repaired = rewriteInfo(m, da.infoOff, good) == nil
		}
		r.add(p)
		return
	}
	other, err := m.Slice(da.info2Off, InfoSize)
	if err != nil {
		r.add(Problem{Arena: i, Kind: ProblemInfo2, Message: err.Error()})
		return
	}
	var in2 Info
	msg := ""
	if err := in2.decode(other); err != nil {
		msg = fmt.Sprintf("backup info2 at %#x damaged: %v", da.info2Off, err)
	} else if !bytes.Equal(good, other) {
		msg = fmt.Sprintf("backup info2 at %#x differs from the info block", da.info2Off)
	}
	if msg != "" {
		p := Problem{Arena: i, Kind: ProblemInfo2, Message: msg, Repairable: true}
		if repair {
			p.Repaired = rewriteInfo(m, da.info2Off, good) == nil
		}
		r.add(p)
	}
}

func rewriteInfo(m Medium, off int64, src []byte) error {
	dst, err := m.Slice(off, InfoSize)
	if err != nil {
		return err
	}
	copy(dst, src)
	return m.Persist(off, InfoSize)
}

func checkArenaBlocks(m Medium, a *arena, opts CheckOptions, r *CheckReport, done *uint64, total uint64) {
	// Every lane's free block, not only those of the lanes Open would
	// use: each must be owned once.
	free := make([]freeEntry, 0, a.nfree)
	var pending []pendingMove
	err := a.scanFlog(func(_ int, fe freeEntry) { free = append(free, fe) }, func(p pendingMove) { pending = append(pending, p) })
	if err != nil {
		r.add(Problem{Arena: a.index, Kind: ProblemFlog, Message: err.Error()})
		return
	}
	r.FlogEntries += len(free)
	moved := make(map[uint32]uint32, len(pending))
	for _, p := range pending {
		pr := Problem{Arena: a.index, Kind: ProblemRecovery, Repairable: true,
			Message: fmt.Sprintf("lane %d: write of LBA %d to block %d reached the flog but not the map", p.lane, p.premap, p.newMap)}
		if opts.Repair && a.info.Flags&InfoFlagError == 0 {
			pr.Repaired = a.writeMap(m, p.premap, p.newMap|mapNormal) == nil
		}
		if !pr.Repaired {
			moved[p.premap] = p.newMap // recovery on open would make this the mapping
		}
		r.add(pr)
	}
	// The same claims Open refuses to serve with (checkOwnership), all
	// of them reported rather than the first.
	c := newBlockClaims(a, moved)
	for lane, fe := range free {
		if !c.claim(fe.block) {
			r.add(Problem{Arena: a.index, Kind: ProblemBlocks, Message: fmt.Sprintf("lane %d: free block %d is also the free block of another lane", lane, fe.block)})
		}
	}
	var mapProblems int
	const maxReported = 20
	c.claimMap(func(premap, block uint32) bool {
		mapProblems++
		if mapProblems > maxReported {
			return true
		}
		if block >= a.internalNLBA {
			r.add(Problem{Arena: a.index, Kind: ProblemMap, Message: fmt.Sprintf("LBA %d maps to block %d, past the arena's %d blocks", premap, block, a.internalNLBA)})
		} else {
			r.add(Problem{Arena: a.index, Kind: ProblemBlocks, Message: fmt.Sprintf("LBA %d maps to block %d, which another LBA or a free list entry already uses", premap, block)})
		}
		return true
	}, func(n uint32) {
		if opts.Progress != nil {
			opts.Progress(*done+uint64(n), total)
		}
	})
	r.MapEntries += uint64(a.externalNLBA)
	*done += uint64(a.externalNLBA)
	if mapProblems > maxReported {
		r.add(Problem{Arena: a.index, Kind: ProblemMap, Message: fmt.Sprintf("%d more map problems not listed", mapProblems-maxReported)})
	}
	if opts.Progress != nil {
		opts.Progress(*done, total)
	}
	// With every one of internal_nlba blocks owned at most once and
	// external_nlba + nfree == internal_nlba owners, a block used twice
	// means another is unused; report the unused ones too, briefly.
	var unused []uint32
	for b := uint32(0); b < a.internalNLBA && len(unused) < 8; b++ {
		if !c.owned(b) {
			unused = append(unused, b)
		}
	}
	if len(unused) > 0 {
		r.add(Problem{Arena: a.index, Kind: ProblemBlocks, Message: fmt.Sprintf("blocks used by no LBA and no free list entry (lost): %v…", unused)})
	}
}
