package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nvblk/nvblk/vhostuser/frontend/loadgen"
)

func init() {
	register(&command{name: "bench", summary: "drive any vhost-user-blk socket (nvblk, qemu-storage-daemon) with a fio-like load; no VM",
		usage: "--socket-path S [--rw randread|randwrite|randrw|read|write] [--bs 4k] [--iodepth 32] [--queues 1] " +
			"[--time 10s] [--ramp 0s] [--size-limit N] [--fill] [--spin-us N] [--pid P] [--json] [--continue-on-error] [--packed] [--dirty-log]",
		run: runBench})
	flagSets["bench"] = func() *flag.FlagSet { fs, _ := benchFlags(); return fs }
}

type benchArgs struct {
	socketPath string
	rw         string
	bs         sizeFlag
	iodepth    int
	queues     int
	time       time.Duration
	ramp       time.Duration
	sizeLimit  sizeFlag
	fill       bool
	spinUS     uint
	pid        int
	json       bool
	keepGoing  bool // --continue-on-error
	packed     bool
	dirtyLog   bool
}

func benchFlags() (*flag.FlagSet, *benchArgs) {
	a := &benchArgs{bs: sizeFlag{4096}}
	fs := newFlagSet("bench")
	fs.StringVar(&a.socketPath, "socket-path", "", "the back-end's vhost-user socket (required)")
	fs.StringVar(&a.rw, "rw", "randread", "access pattern: randread, randwrite, randrw (50% reads), read or write (sequential)")
	fs.Var(&a.bs, "bs", "bytes per request, a multiple of 512, e.g. 4k or 128k")
	fs.IntVar(&a.iodepth, "iodepth", 32, fmt.Sprintf("requests in flight per queue, 1..%d", loadgen.MaxIODepth))
	fs.IntVar(&a.queues, "queues", 1, "virtqueues to drive, one goroutine each")
	fs.DurationVar(&a.time, "time", 10*time.Second, "length of the measured phase")
	fs.DurationVar(&a.ramp, "ramp", 0, "run unmeasured for this long first")
	fs.Var(&a.sizeLimit, "size-limit", "use only this many bytes from the start of the disk (default: all of it)")
	fs.BoolVar(&a.fill, "fill", false, "write the whole region once, sequentially, before measuring (no reads of holes)")
	fs.UintVar(&a.spinUS, "spin-us", 0, "busy-poll completions for this many microseconds before sleeping on the call eventfd")
	fs.IntVar(&a.pid, "pid", 0, "the back-end's process id: report its CPU time during the run")
	fs.BoolVar(&a.json, "json", false, "print the result as JSON")
	fs.BoolVar(&a.keepGoing, "continue-on-error", false, "count requests the back-end fails and go on (default: the first one ends the run)")
	fs.BoolVar(&a.packed, "packed", false, "drive packed virtqueues (VIRTIO_F_RING_PACKED) instead of split ones")
	fs.BoolVar(&a.dirtyLog, "dirty-log", false, "have the back-end mark its writes in a dirty log, as during a live migration "+
		"(VHOST_F_LOG_ALL; nvblk serve --migration): what logging costs")
	return fs, a
}

// benchConfig turns parsed flags into a loadgen run.
func benchConfig(a *benchArgs) (loadgen.Config, error) {
	var c loadgen.Config
	if a.socketPath == "" {
		return c, usagef("--socket-path is required")
	}
	mode, err := loadgen.ParseMode(a.rw)
	if err != nil {
		return c, usagef("--rw %q: want randread, randwrite, randrw, read or write", a.rw)
	}
	switch {
	case a.bs.n%512 != 0 || a.bs.n > 4<<20:
		return c, usagef("--bs %d: want a multiple of 512 up to 4M", a.bs.n)
	case a.iodepth < 1 || a.iodepth > loadgen.MaxIODepth:
		return c, usagef("--iodepth %d: want 1..%d", a.iodepth, loadgen.MaxIODepth)
	case a.queues < 1 || a.queues > 64:
		return c, usagef("--queues %d: want 1..64", a.queues)
	case a.time <= 0:
		return c, usagef("--time %v: want a positive duration", a.time)
	case a.ramp < 0:
		return c, usagef("--ramp %v: want a duration >= 0", a.ramp)
	case a.pid < 0:
		return c, usagef("--pid %d", a.pid)
	}
	return loadgen.Config{
		Mode: mode, BlockSize: int(a.bs.n), IODepth: a.iodepth, Queues: a.queues,
		Duration: a.time, Ramp: a.ramp, SizeLimit: uint64(a.sizeLimit.n), Fill: a.fill,
		Spin: time.Duration(a.spinUS) * time.Microsecond, ContinueOnError: a.keepGoing, Packed: a.packed, DirtyLog: a.dirtyLog,
	}, nil
}

func runBench(env *environment, args []string) error {
	fs, a := benchFlags()
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected arguments %q", pos)
	}
	c, err := benchConfig(a)
	if err != nil {
		return err
	}
	if env.stderrIsTTY {
		c.Progress = func(p loadgen.Progress) { progressLine(env.stderr, p) }
	}
	dev, err := loadgen.Connect(a.socketPath, c)
	if err != nil {
		return err
	}
	defer dev.Close()
	g, err := loadgen.New(dev, c)
	if err != nil {
		return err
	}
	r, err := g.Run(a.pid)
	if env.stderrIsTTY {
		fmt.Fprint(env.stderr, "\r\033[K")
	}
	if err != nil {
		return err
	}
	if a.json {
		return printBenchJSON(env.stdout, a, r)
	}
	printBench(env.stdout, a, r)
	return nil
}

func progressLine(w io.Writer, p loadgen.Progress) {
	if p.Phase != "run" || p.Elapsed <= 0 {
		fmt.Fprintf(w, "\r\033[K%s...", p.Phase)
		return
	}
	s := p.Elapsed.Seconds()
	fmt.Fprintf(w, "\r\033[K%s %4.0fs  %9.0f IOPS  %8.1f MB/s", p.Phase, s, float64(p.Ops)/s, float64(p.Bytes)/1e6/s)
}

// cpuShare is CPU time as a percentage of one core over the run.
func cpuShare(cpu, wall time.Duration) float64 {
	if wall <= 0 {
		return 0
	}
	return 100 * cpu.Seconds() / wall.Seconds()
}

func printBench(w io.Writer, a *benchArgs, r *loadgen.Result) {
	c, h := r.Config, &r.Latency
	fmt.Fprintf(w, "%s bs=%d iodepth=%d queues=%d ring=%s: %d requests in %.2fs\n",
		c.Mode, c.BlockSize, c.IODepth, c.Queues, ringName(c.Packed), r.Ops, r.Elapsed.Seconds())
	if c.ContinueOnError {
		fmt.Fprintf(w, "  failed     %d requests\n", r.Errors)
	}
	fmt.Fprintf(w, "  IOPS       %.0f\n  bandwidth  %.1f MB/s\n", r.IOPS(), r.MBps())
	fmt.Fprintf(w, "  latency    p50 %v  p99 %v  p99.9 %v  mean %v  max %v\n",
		h.Quantile(0.5), h.Quantile(0.99), h.Quantile(0.999), h.Mean(), h.Max())
	fmt.Fprintf(w, "  cpu        load generator %.0f%% of a core", cpuShare(r.GenCPU, r.Elapsed))
	if r.BackendCPUKnown {
		fmt.Fprintf(w, ", back-end (pid %d) %.0f%%", a.pid, cpuShare(r.BackendCPU, r.Elapsed))
	}
	fmt.Fprintln(w)
}

// ringName names the virtqueue layout a run drove.
func ringName(packed bool) string {
	if packed {
		return "packed"
	}
	return "split"
}

type benchJSON struct {
	RW            string  `json:"rw"`
	BS            int     `json:"bs"`
	IODepth       int     `json:"iodepth"`
	Queues        int     `json:"queues"`
	Ring          string  `json:"ring"` // split or packed
	Seconds       float64 `json:"seconds"`
	Requests      uint64  `json:"requests"`
	Failed        uint64  `json:"failed"`
	IOPS          float64 `json:"iops"`
	MBps          float64 `json:"mb_per_s"`
	LatP50us      float64 `json:"lat_p50_us"`
	LatP99us      float64 `json:"lat_p99_us"`
	LatP999us     float64 `json:"lat_p999_us"`
	LatMeanus     float64 `json:"lat_mean_us"`
	LatMaxus      float64 `json:"lat_max_us"`
	GenCPUPct     float64 `json:"loadgen_cpu_pct"`
	BackendCPUPct float64 `json:"backend_cpu_pct,omitempty"`
	BackendPID    int     `json:"backend_pid,omitempty"`
}

func printBenchJSON(w io.Writer, a *benchArgs, r *loadgen.Result) error {
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	c, h := r.Config, &r.Latency
	j := benchJSON{
		RW: c.Mode.String(), BS: c.BlockSize, IODepth: c.IODepth, Queues: c.Queues, Ring: ringName(c.Packed),
		Seconds: r.Elapsed.Seconds(), Requests: r.Ops, Failed: r.Errors, IOPS: r.IOPS(), MBps: r.MBps(),
		LatP50us: us(h.Quantile(0.5)), LatP99us: us(h.Quantile(0.99)), LatP999us: us(h.Quantile(0.999)),
		LatMeanus: us(h.Mean()), LatMaxus: us(h.Max()), GenCPUPct: cpuShare(r.GenCPU, r.Elapsed),
	}
	if r.BackendCPUKnown {
		j.BackendCPUPct, j.BackendPID = cpuShare(r.BackendCPU, r.Elapsed), a.pid
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(j)
}
