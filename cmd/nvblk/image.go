package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

func init() {
	register(&command{name: "format", summary: "write a new, empty BTT over FILE (created and allocated if missing)",
		usage: "FILE [--size 1G] [--sector-size 4096] [--uuid U] [--version 1.1|2.0] [--force] [--durability MODE] [--free-blocks N]",
		run:   runFormat})
	register(&command{name: "info", summary: "describe the BTT on FILE: version, uuid, sector size, capacity, arenas",
		usage: "FILE [--json]", run: runInfo})
	register(&command{name: "check", summary: "verify the BTT on FILE; exit 1 with a report when inconsistent",
		usage: "FILE [--repair] [--json]", run: runCheck})
	register(&command{name: "read", summary: "write sectors of the BTT on FILE to standard output",
		usage: "FILE --lba N [--count C]", run: runRead})
	register(&command{name: "write", summary: "write whole sectors from standard input to the BTT on FILE",
		usage: "FILE --lba N [--durability MODE]", run: runWrite})
	flagSets["format"] = func() *flag.FlagSet { fs, _ := formatFlags(); return fs }
	flagSets["info"] = func() *flag.FlagSet { fs, _ := infoFlags(); return fs }
	flagSets["check"] = func() *flag.FlagSet { fs, _ := checkFlags(); return fs }
	flagSets["read"] = func() *flag.FlagSet { fs, _ := readFlags(); return fs }
	flagSets["write"] = func() *flag.FlagSet { fs, _ := writeFlags(); return fs }
}

type formatArgs struct {
	size       sizeFlag
	sectorSize uint
	uuid       string
	version    string
	force      bool
	durability string
	freeBlocks uint
}

func formatFlags() (*flag.FlagSet, *formatArgs) {
	a := &formatArgs{}
	fs := newFlagSet("format")
	fs.Var(&a.size, "size", "size of FILE to create, e.g. 1G (required when FILE does not exist; must match when it does)")
	fs.UintVar(&a.sectorSize, "sector-size", 4096, "external sector size: 512, 520, 528, 4096, 4104, 4160 or 4224")
	fs.StringVar(&a.uuid, "uuid", "", "BTT uuid (default: random)")
	fs.StringVar(&a.version, "version", "1.1", "BTT layout version: 1.1 (label-less namespace, the kernel's default) or 2.0")
	fs.BoolVar(&a.force, "force", false, "overwrite an existing BTT")
	fs.StringVar(&a.durability, "durability", "auto", durabilityHelp)
	fs.UintVar(&a.freeBlocks, "free-blocks", btt.DefaultNFree, fmt.Sprintf(
		"free blocks per arena (nfree), %d to %d: the kernel writes %d; in flush durability, serve commits (two msyncs) whenever writes since the last FLUSH have taken all of them",
		1, btt.MaxNFree, btt.DefaultNFree))
	return fs, a
}

func runFormat(env *environment, args []string) error {
	fs, a := formatFlags()
	path, err := fileArg(fs, args)
	if err != nil {
		return err
	}
	opts := btt.FormatOptions{LBASize: uint32(a.sectorSize), NFree: uint32(a.freeBlocks)}
	if a.freeBlocks < 1 || a.freeBlocks > btt.MaxNFree {
		return usagef("--free-blocks %d: want 1 to %d", a.freeBlocks, btt.MaxNFree)
	}
	if !supported(uint32(a.sectorSize)) || a.sectorSize > 1<<16 {
		return usagef("--sector-size %d: want one of %v", a.sectorSize, btt.SupportedLBASizes)
	}
	switch a.version {
	case "1.1":
		opts.Version = btt.Version11
	case "2.0":
		opts.Version = btt.Version20
	default:
		return usagef("--version %q: want 1.1 or 2.0", a.version)
	}
	if a.uuid != "" {
		if opts.UUID, err = btt.ParseUUID(a.uuid); err != nil {
			return usagef("--uuid %q: want 8-4-4-4-12 hex digits", a.uuid)
		}
	}
	dur, err := parseDurability(a.durability)
	if err != nil {
		return err
	}
	created := false
	st, statErr := os.Stat(path)
	switch {
	case errors.Is(statErr, os.ErrNotExist):
		if a.size.n == 0 {
			return usagef("%s does not exist: give --size to create it", path)
		}
		created = true
	case statErr != nil:
		return statErr
	case st.Mode().IsRegular() && a.size.n != 0 && a.size.n != st.Size():
		return fmt.Errorf("%s exists with %d bytes, not the %d of --size; remove it or omit --size", path, st.Size(), a.size.n)
	}
	m, err := pmem.Open(path, pmem.Options{Create: created, Size: a.size.n, Durability: dur})
	if err != nil {
		return err
	}
	defer m.Close()
	if !created && !a.force {
		if d, err := btt.Open(m, btt.Options{ReadOnly: true}); err == nil {
			return fmt.Errorf("%s already holds a BTT (uuid %s, %d sectors of %d bytes); use --force to overwrite it",
				path, btt.FormatUUID(d.UUID()), d.NumSectors(), d.LBASize())
		}
	}
	// Every block before the first store: Format's own stores, and later
	// a guest's, then never meet a hole the filesystem has no room for.
	// A file created here that cannot get its space is removed again; an
	// existing one is left as it was.
	err = m.Allocate()
	if err == nil {
		err = btt.Format(m, opts)
	}
	if err != nil {
		if created {
			m.Close()
			os.Remove(path)
		}
		return err
	}
	d, err := btt.Open(m, btt.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("reopening after format: %w", err)
	}
	fmt.Fprintf(env.stdout, "formatted %s: BTT %s, uuid %s, %d sectors of %d bytes (%s)\n", path, d.Version(),
		btt.FormatUUID(d.UUID()), d.NumSectors(), d.LBASize(), humanBytes(int64(d.NumSectors())*int64(d.SectorSize())))
	return nil
}

func supported(s uint32) bool {
	for _, v := range btt.SupportedLBASizes {
		if v == s {
			return true
		}
	}
	return false
}

func humanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// openImage opens FILE's medium and BTT. Opened writable (serve, write),
// a sparse image first gets its missing blocks: a full filesystem is then
// one error here, before a guest writes, instead of a failed write for
// every page that cannot be allocated.
func openImage(path string, readOnly bool, dur pmem.Durability) (*pmem.Medium, *btt.Device, error) {
	m, err := pmem.Open(path, pmem.Options{ReadOnly: readOnly, Durability: dur})
	if err != nil {
		return nil, nil, err
	}
	if !readOnly {
		if err := m.Allocate(); err != nil {
			m.Close()
			return nil, nil, err
		}
	}
	d, err := btt.Open(m, btt.Options{ReadOnly: readOnly})
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, d, nil
}

func infoFlags() (*flag.FlagSet, *bool) {
	fs := newFlagSet("info")
	return fs, fs.Bool("json", false, "print JSON")
}

// imageInfo is `nvblk info --json`. Where `ndctl list` describes a
// sector-mode namespace the fields are named as it names them (dev, mode
// "sector", size in usable bytes, uuid of the BTT, sector_size); the rest
// describe the BTT itself.
type imageInfo struct {
	Dev        string          `json:"dev"`
	Path       string          `json:"path"`
	Mode       string          `json:"mode"`
	Version    string          `json:"version"`
	UUID       string          `json:"uuid"`
	SectorSize uint32          `json:"sector_size"`
	LBASize    uint32          `json:"lba_size"`
	Size       int64           `json:"size"`
	NumSectors uint64          `json:"num_sectors"`
	RawSize    int64           `json:"raw_size"`
	ReadOnly   bool            `json:"read_only"`
	Arenas     []btt.ArenaInfo `json:"arenas"`
}

func runInfo(env *environment, args []string) error {
	fs, asJSON := infoFlags()
	path, err := fileArg(fs, args)
	if err != nil {
		return err
	}
	m, d, err := openImage(path, true, pmem.DurabilityAuto)
	if err != nil {
		return err
	}
	defer m.Close()
	info := imageInfo{
		Dev: path, Path: path, Mode: "sector", Version: d.Version().String(), UUID: btt.FormatUUID(d.UUID()),
		SectorSize: d.SectorSize(), LBASize: d.LBASize(), NumSectors: d.NumSectors(),
		Size: int64(d.NumSectors()) * int64(d.SectorSize()), RawSize: m.Size(), ReadOnly: d.ErrorFlag(),
		Arenas: d.Arenas(),
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
	w := env.stdout
	fmt.Fprintf(w, "%s: BTT version %s\n", path, info.Version)
	fmt.Fprintf(w, "  uuid         %s\n", info.UUID)
	fmt.Fprintf(w, "  sector size  %d (lba size %d)\n", info.SectorSize, info.LBASize)
	fmt.Fprintf(w, "  capacity     %d sectors, %s\n", info.NumSectors, humanBytes(info.Size))
	fmt.Fprintf(w, "  raw size     %s\n", humanBytes(info.RawSize))
	if d.ErrorFlag() {
		fmt.Fprintf(w, "  state        read-only (an arena has the error flag)\n")
	}
	for _, a := range info.Arenas {
		fmt.Fprintf(w, "  arena %d      at %#x: external_nlba %d, internal_nlba %d, internal_lbasize %d, nfree %d, flog slots %v\n",
			a.Index, a.Offset, a.ExternalNLBA, a.InternalNLBA, a.InternalLBASize, a.NFree, a.LogIndex)
	}
	return nil
}

type checkArgs struct{ repair, json bool }

func checkFlags() (*flag.FlagSet, *checkArgs) {
	a := &checkArgs{}
	fs := newFlagSet("check")
	fs.BoolVar(&a.repair, "repair", false, "rewrite a damaged info block from its twin and finish pending flog writes, as ndctl check-namespace --repair")
	fs.BoolVar(&a.json, "json", false, "print JSON")
	return fs, a
}

// checkFailed is an inconsistent image: exit 1, the report says why.
type checkFailed struct{}

func (*checkFailed) Error() string { return "BTT inconsistent" }

func runCheck(env *environment, args []string) error {
	fs, a := checkFlags()
	path, err := fileArg(fs, args)
	if err != nil {
		return err
	}
	m, err := pmem.Open(path, pmem.Options{ReadOnly: !a.repair})
	if err != nil {
		return err
	}
	defer m.Close()
	opts := btt.CheckOptions{Repair: a.repair}
	if env.stderrIsTTY && !a.json {
		opts.Progress = progressBar(env.stderr, "checking")
	}
	rep, err := btt.Check(m, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if a.repair {
		if err := m.Flush(); err != nil {
			return err
		}
	}
	if a.json {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		// dev and mode as `ndctl list` names the namespace checked.
		out := struct {
			Dev  string `json:"dev"`
			Mode string `json:"mode"`
			*btt.CheckReport
		}{path, "sector", rep}
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		w := env.stdout
		for _, p := range rep.Problems {
			state := "error"
			switch {
			case p.Repaired:
				state = "repaired"
			case p.Repairable:
				state = "error (repairable with --repair)"
			}
			fmt.Fprintf(w, "arena %d: %s: %s: %s\n", p.Arena, p.Kind, state, p.Message)
		}
		verdict := "consistent"
		if !rep.Consistent {
			verdict = "INCONSISTENT"
		}
		fmt.Fprintf(w, "%s: BTT %s, %d arenas, %d map entries, %d flog lanes checked: %s\n",
			path, rep.Version, len(rep.Arenas), rep.MapEntries, rep.FlogEntries, verdict)
	}
	if !rep.Consistent {
		return &checkFailed{}
	}
	return nil
}

// progressBar draws on a terminal once a job has run for a moment, and
// erases itself at the end.
func progressBar(w io.Writer, what string) func(done, total uint64) {
	start := time.Now()
	drawn := false
	return func(done, total uint64) {
		if time.Since(start) < 500*time.Millisecond || total == 0 {
			return
		}
		pct := done * 100 / total
		const width = 30
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if uint64(i) < pct*width/100 {
				bar[i] = '#'
			}
		}
		fmt.Fprintf(w, "\r%s [%s] %3d%%", what, bar, pct)
		drawn = true
		if done >= total && drawn {
			fmt.Fprint(w, "\r\033[K")
		}
	}
}

type rwArgs struct {
	lba, count uint64
	durability string
}

func readFlags() (*flag.FlagSet, *rwArgs) {
	a := &rwArgs{}
	fs := newFlagSet("read")
	fs.Uint64Var(&a.lba, "lba", ^uint64(0), "first sector (required)")
	fs.Uint64Var(&a.count, "count", 1, "number of sectors")
	return fs, a
}

func writeFlags() (*flag.FlagSet, *rwArgs) {
	a := &rwArgs{}
	fs := newFlagSet("write")
	fs.Uint64Var(&a.lba, "lba", ^uint64(0), "first sector (required)")
	fs.StringVar(&a.durability, "durability", "auto", durabilityHelp)
	return fs, a
}

func runRead(env *environment, args []string) error {
	fs, a := readFlags()
	path, err := fileArg(fs, args)
	if err != nil {
		return err
	}
	if a.lba == ^uint64(0) {
		return usagef("missing --lba")
	}
	if a.count == 0 {
		return usagef("--count must be at least 1")
	}
	m, d, err := openImage(path, true, pmem.DurabilityAuto)
	if err != nil {
		return err
	}
	defer m.Close()
	if a.count > d.NumSectors() || a.lba > d.NumSectors()-a.count {
		return fmt.Errorf("sectors %d..%d are past the end of %s (%d sectors)", a.lba, a.lba+a.count-1, path, d.NumSectors())
	}
	ss := uint64(d.SectorSize())
	buf := make([]byte, min(a.count, max(1, (1<<20)/ss))*ss)
	for done := uint64(0); done < a.count; {
		n := min(a.count-done, uint64(len(buf))/ss)
		if err := d.ReadV(a.lba+done, [][]byte{buf[:n*ss]}); err != nil {
			return err
		}
		if _, err := env.stdout.Write(buf[:n*ss]); err != nil {
			return err
		}
		done += n
	}
	return nil
}

func runWrite(env *environment, args []string) error {
	fs, a := writeFlags()
	path, err := fileArg(fs, args)
	if err != nil {
		return err
	}
	if a.lba == ^uint64(0) {
		return usagef("missing --lba")
	}
	dur, err := parseDurability(a.durability)
	if err != nil {
		return err
	}
	// Read all input first: a short final sector must be refused before
	// anything is written.
	data, err := io.ReadAll(env.stdin)
	if err != nil {
		return fmt.Errorf("reading standard input: %w", err)
	}
	m, d, err := openImage(path, false, dur)
	if err != nil {
		return err
	}
	defer m.Close()
	ss := uint64(d.SectorSize())
	n := uint64(len(data)) / ss
	if len(data) == 0 || uint64(len(data))%ss != 0 {
		return fmt.Errorf("standard input has %d bytes: want a whole, non-zero number of %d-byte sectors", len(data), ss)
	}
	if n > d.NumSectors() || a.lba > d.NumSectors()-n {
		return fmt.Errorf("sectors %d..%d are past the end of %s (%d sectors)", a.lba, a.lba+n-1, path, d.NumSectors())
	}
	if err := d.WriteV(a.lba, [][]byte{data}); err != nil {
		return err
	}
	if err := d.Close(); err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "wrote %d sectors at LBA %d\n", n, a.lba)
	return nil
}
