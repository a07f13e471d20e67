package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/internal/diskmove"
	"github.com/nvblk/nvblk/nbd"
)

func init() {
	register(&command{name: "move", summary: "move a served disk to another host's serve --incoming while its guest runs, switching over with the guest's live migration",
		usage: "--socket-path S | --control-socket PATH  --to NBD-URI  [--json]", run: runMove})
	flagSets["move"] = func() *flag.FlagSet { fs, _ := moveFlags(); return fs }
}

type moveArgs struct {
	socketPath, control, to string
	json                    bool
}

func moveFlags() (*flag.FlagSet, *moveArgs) {
	a := &moveArgs{}
	fs := newFlagSet("move")
	fs.StringVar(&a.socketPath, "socket-path", "", "the --socket-path S of the source nvblk serve: its control socket is S"+controlSuffix)
	fs.StringVar(&a.control, "control-socket", "", "the source serve's control socket, when it was started with --control-socket PATH")
	fs.StringVar(&a.to, "to", "", "the destination serve's --incoming, an NBD URI: nbd://HOST:PORT or nbd+unix:///?socket=PATH (required)")
	fs.BoolVar(&a.json, "json", false, "print the move's statistics as JSON")
	return fs, a
}

// moveTimeout bounds the wait for a move's answer: the move waits for the
// guest's migration to switch over, and a serve gives up on its own after
// diskmove's default wait of 30 minutes once converged.
const moveTimeout = 2 * time.Hour

func runMove(env *environment, args []string) error {
	fs, a := moveFlags()
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected arguments %q", pos)
	}
	if a.to == "" {
		return usagef("--to is required: the destination serve's --incoming NBD URI")
	}
	if _, err := nbd.ParseURI(a.to); err != nil {
		return usagef("--to: %v", err)
	}
	serve := statusArgs{socketPath: a.socketPath, control: a.control}
	if err := serve.checkServe(); err != nil {
		return err
	}
	r, err := serve.do(control.Request{Cmd: "move", To: a.to}, moveTimeout)
	if err != nil {
		return err
	}
	var st diskmove.Stats
	if len(r.Moved) > 0 {
		if err := json.Unmarshal(r.Moved, &st); err != nil {
			return fmt.Errorf("move: the serve's statistics: %w", err)
		}
	}
	if a.json {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(env.stdout, "moved %d sectors of %d bytes to %s: %d rounds, %d sectors sent (%d as zeroes, %d data bytes); "+
			"converged after %v, %d sectors at cutover sent in %v; %v in all\n",
			st.Sectors, st.SectorSize, a.to, st.Rounds, st.SectorsSent, st.ZeroSectors, st.BytesSent,
			st.Converged.Round(time.Millisecond), st.CutoverSectors, st.CutoverTook.Round(time.Microsecond), st.Total.Round(time.Millisecond))
	}
	return nil
}
