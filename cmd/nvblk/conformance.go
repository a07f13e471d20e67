package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/nvblk/nvblk/vhostuser/conformance"
)

func init() {
	register(&command{name: "conformance", summary: "put a vhost-user-blk back-end socket through protocol and virtio-blk checks",
		usage: "--socket-path S [--json] [--destructive] [--timeout 5s]", run: runConformance})
	flagSets["conformance"] = func() *flag.FlagSet { fs, _ := conformanceFlags(); return fs }
}

type conformanceArgs struct {
	socketPath  string
	json        bool
	destructive bool
	timeout     time.Duration
}

func conformanceFlags() (*flag.FlagSet, *conformanceArgs) {
	a := &conformanceArgs{}
	fs := newFlagSet("conformance")
	fs.StringVar(&a.socketPath, "socket-path", "", "the back-end's vhost-user socket (required)")
	fs.BoolVar(&a.json, "json", false, "print JSON")
	fs.BoolVar(&a.destructive, "destructive", false,
		"also run the checks that write: they write only the last 256 KiB of the disk, saved first and written back at the end")
	fs.DurationVar(&a.timeout, "timeout", 5*time.Second, "bound on each request and each protocol reply")
	return fs, a
}

// conformanceFailed is a run with failed checks: exit 1, the report says
// which.
type conformanceFailed struct{ n int }

func (e *conformanceFailed) Error() string { return fmt.Sprintf("%d checks failed", e.n) }

func runConformance(env *environment, args []string) error {
	fs, a := conformanceFlags()
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) > 0:
		return usagef("unexpected arguments %q", pos)
	case a.socketPath == "":
		return usagef("missing --socket-path")
	case a.timeout <= 0:
		return usagef("--timeout must be positive")
	}
	rep, err := conformance.Run(a.socketPath, conformance.Options{Destructive: a.destructive, Timeout: a.timeout})
	if err != nil {
		return err
	}
	if a.json {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		counts := map[conformance.Verdict]int{}
		for _, r := range rep.Results {
			counts[r.Verdict]++
			fmt.Fprintf(env.stdout, "%-4s  %-44s %s\n", r.Verdict, r.Name, strings.TrimSpace(r.Detail+" ["+r.Clause+"]"))
		}
		fmt.Fprintf(env.stdout, "%s: %d passed, %d failed, %d skipped (capacity %d sectors, blk_size %d)\n", a.socketPath,
			counts[conformance.Pass], counts[conformance.Fail], counts[conformance.Skip], rep.Capacity, rep.BlockSize)
	}
	if n := len(rep.Failed()); n > 0 {
		return fmt.Errorf("%s: %w", a.socketPath, &conformanceFailed{n})
	}
	return nil
}
