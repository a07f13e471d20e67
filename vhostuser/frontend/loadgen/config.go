package loadgen

import (
	"errors"
	"fmt"
	"time"
)

// Mode is the access pattern.
type Mode int

// The patterns, named as fio names them.
const (
	RandRead Mode = iota
	RandWrite
	RandRW // 50% reads
	SeqRead
	SeqWrite
)

var modeNames = [...]string{RandRead: "randread", RandWrite: "randwrite", RandRW: "randrw", SeqRead: "read", SeqWrite: "write"}

func (m Mode) String() string {
	if m < 0 || int(m) >= len(modeNames) {
		return fmt.Sprintf("Mode(%d)", int(m))
	}
	return modeNames[m]
}

// ParseMode reads a fio-style --rw value.
func ParseMode(s string) (Mode, error) {
	for m, n := range modeNames {
		if n == s {
			return Mode(m), nil
		}
	}
	return 0, fmt.Errorf("loadgen: rw %q: want randread, randwrite, randrw, read or write", s)
}

// MaxIODepth bounds requests in flight per queue: each takes three
// descriptors and libvhost-user back-ends accept rings of at most 1024.
const MaxIODepth = 256

// Config is one run.
type Config struct {
	Mode      Mode
	BlockSize int // bytes per request; a multiple of 512
	IODepth   int // requests in flight per queue
	Queues    int
	// Duration is how long the measured phase lasts, after Ramp.
	Duration time.Duration
	// Ramp runs the load unmeasured first (caches, page faults, the
	// back-end's thread wake-ups).
	Ramp time.Duration
	// Requests, if non-zero, ends the run after this many measured
	// completions instead of after Duration (benchmarks use b.N).
	Requests uint64
	// SizeLimit is how many bytes from the start of the disk are used; 0
	// means the whole disk. It is cut into one stripe per queue for the
	// sequential modes.
	SizeLimit uint64
	// Fill writes every block of the region once, sequentially, before
	// the run, so neither back-end reads holes or allocates on write.
	Fill bool
	// ContinueOnError counts requests the device fails (any status but
	// OK) in Result.Errors and goes on, as fio's continue_on_error does:
	// for runs that expect some requests to fail (a full host filesystem, a
	// medium error). Without it the first failed request ends the run.
	ContinueOnError bool
	// Spin busy-polls the used ring for this long before sleeping on the
	// call eventfd. Zero sleeps at once, as a guest driver does.
	Spin time.Duration
	// Packed drives packed virtqueues (VIRTIO_F_RING_PACKED) instead of
	// split ones; Connect fails if the back-end does not offer them.
	Packed bool
	// DirtyLog runs with the back-end marking its writes in a dirty log
	// (VHOST_F_LOG_ALL, as during a live migration): what logging costs.
	// Connect fails if the back-end does not offer it.
	DirtyLog bool
	// Progress, if set, is called about once a second with the measured
	// completions so far, from the goroutine that called Run.
	Progress func(Progress)
}

// Progress is a running total.
type Progress struct {
	Elapsed time.Duration // of the measured phase; 0 during ramp and fill
	Ops     uint64
	Bytes   uint64
	Phase   string // "fill", "ramp" or "run"
}

// validate checks c against a disk of capacity bytes and fills defaults.
func (c *Config) validate(capacity uint64) error {
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.IODepth == 0 {
		c.IODepth = 1
	}
	switch {
	case c.Mode < RandRead || c.Mode > SeqWrite:
		return fmt.Errorf("loadgen: unknown mode %d", int(c.Mode))
	case c.BlockSize <= 0 || c.BlockSize%512 != 0:
		return fmt.Errorf("loadgen: block size %d is not a positive multiple of 512", c.BlockSize)
	case c.BlockSize > 4<<20:
		return fmt.Errorf("loadgen: block size %d over 4 MiB", c.BlockSize)
	case c.IODepth < 1 || c.IODepth > MaxIODepth:
		return fmt.Errorf("loadgen: iodepth %d outside 1..%d", c.IODepth, MaxIODepth)
	case c.Queues < 1:
		return fmt.Errorf("loadgen: %d queues", c.Queues)
	case c.Duration <= 0 && c.Requests == 0:
		return errors.New("loadgen: neither a duration nor a request count")
	case c.Requests > 0 && c.Ramp > 0:
		return errors.New("loadgen: a request count and a ramp do not combine")
	case c.Duration < 0 || c.Ramp < 0 || c.Spin < 0:
		return errors.New("loadgen: negative duration")
	}
	if c.SizeLimit == 0 || c.SizeLimit > capacity {
		c.SizeLimit = capacity
	}
	stripe := c.SizeLimit / uint64(c.Queues) / uint64(c.BlockSize)
	if stripe < uint64(c.IODepth) {
		return fmt.Errorf("loadgen: %d bytes of disk leave fewer than %d blocks of %d per queue", c.SizeLimit, c.IODepth, c.BlockSize)
	}
	return nil
}
