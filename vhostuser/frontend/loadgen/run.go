package loadgen

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// Result is one run's measured phase.
type Result struct {
	Config Config
	Ops    uint64
	Bytes  uint64
	// Errors is the requests the device failed, counted only with
	// Config.ContinueOnError (and not in Ops).
	Errors  uint64
	Elapsed time.Duration
	Latency Histogram
	// GenCPU is the CPU time of this process (the load generator, and
	// anything else in it) during the measured phase.
	GenCPU time.Duration
	// BackendCPU is the CPU time of Config.BackendPID during the measured
	// phase; BackendCPUKnown is false when no pid was given.
	BackendCPU      time.Duration
	BackendCPUKnown bool
}

// IOPS is completed requests per second.
func (r *Result) IOPS() float64 { return perSecond(float64(r.Ops), r.Elapsed) }

// MBps is megabytes (10^6) per second.
func (r *Result) MBps() float64 { return perSecond(float64(r.Bytes)/1e6, r.Elapsed) }

func perSecond(v float64, d time.Duration) float64 {
	if d <= 0 {
		return math.NaN()
	}
	return v / d.Seconds()
}

// FrontendOptions are the Connect options a run of c needs: rings big
// enough for c.IODepth requests of three descriptors, EVENT_IDX (as Linux
// guests negotiate it), and guest memory for the data buffers.
func FrontendOptions(c Config) frontend.Options {
	qd := max(c.IODepth, 1)
	size := uint16(4)
	for int(size) < descsPerReq*qd {
		size *= 2
	}
	queues := max(c.Queues, 1)
	// frontend.Start reserves its own request slots; ours come on top.
	const maxIO = 512
	own := uint64(size) * (maxIO + 8192 + 16*(1+4))
	bs := (uint64(max(c.BlockSize, 0)) + 4095) &^ 4095
	ours := uint64(qd)*bs + uint64(32*qd) + 64
	return frontend.Options{
		NumQueues: queues,
		QueueSize: size,
		MaxIO:     maxIO,
		// No SIZE_MAX: a lane's request is one data descriptor of
		// BlockSize bytes, which may be more than the device's size_max
		// (nvblk's is 128 KiB), and a driver that negotiated SIZE_MAX
		// gets larger descriptors refused (OVMF, too, sends large ones
		// without it).
		SegSize:  0,
		EventIdx: true,
		Packed:   c.Packed,
		DirtyLog: c.DirtyLog,
		MemSize:  uint64(queues)*(own+ours+4096) + 1<<20,
	}
}

// Connect dials a vhost-user-blk socket set up for runs of c.
func Connect(socket string, c Config) (*frontend.Device, error) {
	d, err := frontend.Connect(socket, FrontendOptions(c))
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	if c.Packed && d.Features&virtio.FRingPacked == 0 {
		d.Close()
		return nil, fmt.Errorf("loadgen: the back-end does not offer packed rings (VIRTIO_F_RING_PACKED)")
	}
	if c.DirtyLog {
		if _, err := d.StartLogging(); err != nil {
			d.Close()
			return nil, fmt.Errorf("loadgen: dirty log (does the back-end offer VHOST_F_LOG_ALL? nvblk serve --migration): %w", err)
		}
	}
	return d, nil
}

// Generator is a load generator laid out over one connected device: its
// requests, descriptors and buffers are set up once, in New, and reused by
// every Run.
type Generator struct {
	// Config may change between runs in Mode, Duration, Ramp, Requests,
	// Fill, Spin and Progress; the rest is fixed by New.
	Config Config
	dev    *frontend.Device
	lanes  []*lane
	base   time.Time
}

// New lays out a run of c on d, which must come from Connect (or
// FrontendOptions) with the same IODepth, Queues and BlockSize, and must
// not be used by anything else while the Generator lives.
func New(d *frontend.Device, c Config) (*Generator, error) {
	if err := c.validate(d.Capacity() * virtio.BlkSectorSize); err != nil {
		return nil, err
	}
	if len(d.Queues) < c.Queues {
		return nil, fmt.Errorf("loadgen: device has %d queues, run wants %d", len(d.Queues), c.Queues)
	}
	g := &Generator{Config: c, dev: d, base: time.Now()}
	for i := range c.Queues {
		l, err := newLane(d.Queues[i], d.Mem, i, &c, g.clock)
		if err != nil {
			return nil, err
		}
		g.lanes = append(g.lanes, l)
	}
	return g, nil
}

func (g *Generator) clock() int64 { return int64(time.Since(g.base)) }

// Run runs Fill (if asked), then Ramp, then the measured phase, and
// returns the measured phase. backendPID, if positive, is the process
// whose CPU time is reported.
func (g *Generator) Run(backendPID int) (*Result, error) {
	c := g.Config
	fixed := g.lanes[0]
	if err := c.validate(g.dev.Capacity() * virtio.BlkSectorSize); err != nil {
		return nil, err
	}
	if c.IODepth != len(fixed.reqs) || c.Queues != len(g.lanes) || uint64(c.BlockSize) != fixed.bs {
		return nil, fmt.Errorf("loadgen: iodepth, queues and block size are fixed by New")
	}
	lanes := g.lanes
	for _, l := range lanes {
		l.spin, l.keepGoing = c.Spin, c.ContinueOnError
		l.errs.Store(0)
	}
	if c.Fill {
		for _, l := range lanes {
			l.mode, l.cursor, l.quota, l.stopAt, l.measure = SeqWrite, 0, l.stripe, math.MaxInt64, false
		}
		if err := runLanes(lanes, c.Progress, "fill", nil); err != nil {
			return nil, fmt.Errorf("loadgen: fill: %w", err)
		}
	}
	from := g.clock() + int64(c.Ramp)
	stop := int64(math.MaxInt64)
	if c.Duration > 0 {
		stop = from + int64(c.Duration)
	}
	for i, l := range lanes {
		l.mode, l.cursor, l.measureFrom, l.stopAt, l.measure = c.Mode, 0, from, stop, true
		l.hist, l.lastDone, l.quota = Histogram{}, 0, 0
		l.ops.Store(0)
		l.bytes.Store(0)
		if c.Requests > 0 {
			l.quota = c.Requests / uint64(c.Queues)
			if i == 0 {
				l.quota += c.Requests % uint64(c.Queues)
			}
			if l.quota == 0 {
				l.stopAt = 0 // fewer requests than queues: this one idles
			}
		}
	}
	res := &Result{Config: c, BackendCPUKnown: backendPID > 0}
	// The CPU counters start with the measured phase: now, or when the
	// ramp ends.
	var cpu0 cpuSample
	hook := &measureHook{at: g.base.Add(time.Duration(from)), clock: g.clock, from: from}
	hook.fn = func() (err error) { cpu0, err = takeSample(backendPID); return err }
	if c.Ramp == 0 {
		if err := hook.fn(); err != nil {
			return nil, err
		}
		hook.fn = nil
	}
	if err := runLanes(lanes, c.Progress, "run", hook); err != nil {
		return nil, err
	}
	cpu1, err := takeSample(backendPID)
	if err != nil {
		return nil, err
	}
	res.GenCPU = cpu1.self - cpu0.self
	res.BackendCPU = cpu1.backend - cpu0.backend
	var last int64
	for _, l := range lanes {
		res.Ops += l.ops.Load()
		res.Bytes += l.bytes.Load()
		res.Errors += l.errs.Load()
		res.Latency.Merge(&l.hist)
		last = max(last, l.lastDone)
	}
	if last > from {
		res.Elapsed = time.Duration(last - from)
	}
	if res.Ops == 0 && res.Errors == 0 {
		return res, fmt.Errorf("loadgen: no request completed in the measured phase")
	}
	return res, nil
}

// measureHook runs fn once when the measured phase starts.
type measureHook struct {
	at    time.Time
	fn    func() error
	clock func() int64
	from  int64
}

// runLanes runs every lane on its own goroutine and reports progress from
// this one until they all finish.
func runLanes(lanes []*lane, progress func(Progress), phase string, hook *measureHook) error {
	errs := make(chan error, len(lanes))
	var wg sync.WaitGroup
	for _, l := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- l.run()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var measureC <-chan time.Time
	if hook != nil && hook.fn != nil {
		t := time.NewTimer(time.Until(hook.at))
		defer t.Stop()
		measureC = t.C
	}
	var first error
	for {
		select {
		case <-done:
			close(errs)
			for err := range errs {
				if err != nil && first == nil {
					first = err
				}
			}
			return first
		case <-measureC:
			if err := hook.fn(); err != nil && first == nil {
				first = err
			}
		case <-tick.C:
			if progress == nil {
				continue
			}
			p := Progress{Phase: phase}
			if hook != nil {
				if now := hook.clock(); now >= hook.from {
					p.Elapsed = time.Duration(now - hook.from)
				} else {
					p.Phase = "ramp"
				}
			}
			for _, l := range lanes {
				p.Ops += l.ops.Load()
				p.Bytes += l.bytes.Load()
			}
			progress(p)
		}
	}
}
