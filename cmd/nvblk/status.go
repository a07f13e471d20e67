package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/vhost"
)

func init() {
	register(&command{name: "status", summary: "show a running serve's queues, totals, IOPS and latency (over its control socket)",
		usage: "--socket-path S | --control-socket PATH  [--json]", run: runStatus})
	register(&command{name: "detach", summary: "make a running serve drop its vhost-user front-ends (or one, --session ID) and accept the next",
		usage: "--socket-path S | --control-socket PATH  [--session ID] [DISK (of a serve --disk)]", run: runDetach})
	flagSets["status"] = func() *flag.FlagSet { fs, _ := statusFlags("status"); return fs }
	flagSets["detach"] = func() *flag.FlagSet { fs, _ := statusFlags("detach"); return fs }
}

// controlTimeout bounds one control request.
const controlTimeout = 5 * time.Second

type statusArgs struct {
	socketPath string // serve's vhost-user socket: ask its default control socket
	control    string // or this control socket
	json       bool
	disk       string // detach: the disk of a serve --disk
	session    uint64 // detach: one front-end, as status lists it
}

func statusFlags(name string) (*flag.FlagSet, *statusArgs) {
	a := &statusArgs{}
	fs := newFlagSet(name)
	fs.StringVar(&a.socketPath, "socket-path", "", "the --socket-path S of the nvblk serve to ask: its control socket is S"+controlSuffix+
		" (one of --socket-path and --control-socket is required)")
	fs.StringVar(&a.control, "control-socket", "", "the control socket of the nvblk serve to ask, when it was started with --control-socket PATH")
	if name == "status" {
		fs.BoolVar(&a.json, "json", false, "print JSON")
	}
	if name == "detach" {
		fs.Uint64Var(&a.session, "session", 0, "drop only this front-end (its id in nvblk status), not every one")
	}
	return fs, a
}

func parseStatusArgs(name string, args []string) (*statusArgs, error) {
	fs, a := statusFlags(name)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, err
	}
	if name == "detach" && len(pos) == 1 {
		a.disk, pos = pos[0], nil
	}
	if len(pos) > 0 {
		return nil, usagef("unexpected arguments %q", pos)
	}
	if err := a.checkServe(); err != nil {
		return nil, err
	}
	return a, nil
}

// checkServe says whether exactly one of --socket-path and
// --control-socket names the serve to ask.
func (a *statusArgs) checkServe() error {
	switch {
	case a.socketPath != "" && a.control != "":
		return usagef("--socket-path and --control-socket are mutually exclusive: give one")
	case a.socketPath == "" && a.control == "":
		return usagef("missing --socket-path S (serve's vhost-user socket; its control socket is S%s) or --control-socket PATH",
			controlSuffix)
	}
	return nil
}

// call sends cmd to the control socket a names.
func (a *statusArgs) call(cmd string) (*control.Reply, error) {
	return a.do(control.Request{Cmd: cmd, Disk: a.disk, Session: a.session}, controlTimeout)
}

// do sends req to the control socket a names. When --socket-path S finds
// no S.ctl, the error says why that may be rather than just ENOENT.
func (a *statusArgs) do(req control.Request, timeout time.Duration) (*control.Reply, error) {
	path := a.control
	if a.socketPath != "" {
		path = defaultControlSocket(a.socketPath)
	}
	r, err := control.Do(path, req, timeout)
	// EINVAL: S.ctl does not fit a unix socket address, so serve opened
	// none there (it says so in its log).
	if err != nil && a.socketPath != "" && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EINVAL)) {
		return nil, fmt.Errorf("serve's control socket %s is not there: is nvblk serve --socket-path %s running? "+
			"A serve started with --control-socket %s (or on --fd without --control-socket, or whose S.ctl would be too long a path) opens none; "+
			"one started with --control-socket PATH answers there: pass --control-socket PATH", path, a.socketPath, controlNone)
	}
	return r, err
}

func runStatus(env *environment, args []string) error {
	a, err := parseStatusArgs("status", args)
	if err != nil {
		return err
	}
	r, err := a.call("status")
	if err != nil {
		return err
	}
	if r.Status == nil { // a serve --disk: every disk, each its status
		disks := r.Disks
		if disks == nil {
			disks = []control.DiskInfo{}
		}
		if a.json {
			enc := json.NewEncoder(env.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(disks)
		}
		if len(disks) == 0 {
			fmt.Fprintln(env.stdout, "no disks: add one with nvblk disk add")
		}
		for i, d := range disks {
			if i > 0 {
				fmt.Fprintln(env.stdout)
			}
			ro := ""
			if d.ReadOnly {
				ro = ", read-only"
			}
			fmt.Fprintf(env.stdout, "disk %s: %s on %s, %d sectors of %d bytes, durability %s%s\n", d.Name, d.Image, d.Socket,
				d.Sectors, d.SectorSize, d.Durability, ro)
			if d.Error != "" {
				fmt.Fprintf(env.stdout, "stopped serving: %s\n", d.Error)
			}
			if d.Status != nil {
				printStatus(env.stdout, d.Status)
			}
		}
		return nil
	}
	if a.json {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r.Status)
	}
	printStatus(env.stdout, r.Status)
	return nil
}

func runDetach(env *environment, args []string) error {
	a, err := parseStatusArgs("detach", args)
	if err != nil {
		return err
	}
	r, err := a.call("detach")
	if err != nil {
		return err
	}
	if r.Detached != nil && *r.Detached {
		fmt.Fprintln(env.stdout, "detached the vhost-user front-end")
	} else {
		fmt.Fprintln(env.stdout, "no vhost-user front-end was connected")
	}
	return nil
}

func printStatus(w io.Writer, st *control.Status) {
	conn := "none connected"
	if st.Connected {
		conn = "connected"
	}
	fmt.Fprintf(w, "front-end: %s (%d connections since start); up %v; rates over the last %v\n\n",
		conn, st.Connections, st.Uptime.Round(time.Second), st.Interval.Round(time.Millisecond))
	fmt.Fprintf(w, "%-6s %-7s %-7s %-6s %10s %9s %12s %9s %10s %10s %7s %7s %9s %9s\n", "queue", "enabled", "running", "broken",
		"last_avail", "in_flight", "requests", "IOPS", "read/s", "write/s", "ioerr", "unsupp", "p50", "p99")
	row := func(name string, q *control.QueueStatus, state bool) {
		en, ru, br, la, inf := "", "", "", "", ""
		if state {
			en, ru, br, la = yesNo(q.Enabled), yesNo(q.Running), yesNo(q.Broken), fmt.Sprint(q.LastAvail)
		}
		inf = fmt.Sprint(q.InFlight)
		fmt.Fprintf(w, "%-6s %-7s %-7s %-6s %10s %9s %12d %9.0f %10s %10s %7d %7d %9v %9v\n", name, en, ru, br, la, inf,
			q.Requests, q.IOPS, humanRate(q.ReadBytesPerSec), humanRate(q.WriteBytesPerSec), q.IOErrors, q.Unsupported,
			q.LatencyP50, q.LatencyP99)
	}
	for i := range st.Queues {
		row(fmt.Sprint(st.Queues[i].Index), &st.Queues[i], true)
	}
	row("total", &st.Total, false)
	fmt.Fprintf(w, "\ntotals: %d reads, %d writes, %d flushes, %d other; %s read, %s written; status ok %d, ioerr %d, unsupp %d, none %d\n",
		st.Total.Reads, st.Total.Writes, st.Total.Flushes, st.Total.Others, humanBytes(int64(st.Total.BytesRead)),
		humanBytes(int64(st.Total.BytesWritten)), st.Total.OK, st.Total.IOErrors, st.Total.Unsupported, st.Total.OtherStatus)
	for _, ss := range st.Sessions {
		peer := "peer unknown"
		if ss.PeerKnown {
			peer = fmt.Sprintf("pid %d uid %d gid %d", ss.PeerPID, ss.PeerUID, ss.PeerGID)
		}
		state := "in its handshake"
		if ss.Ready {
			state = "running"
		}
		logging := ""
		if ss.Logging {
			logging = fmt.Sprintf("; dirty logging (a %s log: a migration)", humanBytes(int64(ss.LogBytes)))
		}
		fmt.Fprintf(w, "\nfront-end %d: %s, connected %v ago, %s%s\n", ss.ID, peer, st.Time.Sub(ss.ConnectedAt).Round(time.Second), state, logging)
	}
	for i := range st.Queues {
		q := &st.Queues[i]
		if q.Latency.Count() == 0 {
			continue
		}
		fmt.Fprintf(w, "\nqueue %d latency (since start; p50 %v, p99 %v):\n", q.Index, q.LatencyP50, q.LatencyP99)
		printHistogram(w, &q.Latency)
	}
}

// printHistogram prints the non-empty log2 buckets with a bar each.
func printHistogram(w io.Writer, h *vhost.LatencyHistogram) {
	var most uint64
	for _, c := range h {
		most = max(most, c)
	}
	for b, c := range h {
		if c == 0 {
			continue
		}
		lo := time.Duration(0)
		if b > 0 {
			lo = vhost.BucketUpper(b - 1)
		}
		hi := vhost.BucketUpper(b).String()
		if b == vhost.LatencyBuckets-1 {
			hi = "..."
		}
		fmt.Fprintf(w, "  [%9v, %9s) %10d %s\n", lo, hi, c, strings.Repeat("#", int(1+c*39/most)))
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func humanRate(bps float64) string {
	return humanBytes(int64(bps)) + "/s"
}
