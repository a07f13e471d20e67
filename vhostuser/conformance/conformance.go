// Package conformance puts any vhost-user-blk back-end socket (nvblk's,
// qemu-storage-daemon's, another program's) through protocol and virtio-blk
// checks, driving it with vhostuser/frontend the way QEMU would: the handshake
// and feature negotiation, the config space, every request type with its
// data verified, the error statuses the virtio 1.2 spec (§5.2.6) demands,
// descriptor layouts a guest may use, indirect tables, EVENT_IDX,
// multiqueue, stopping a running ring, read-only behaviour and reconnects.
//
// Each check has a name and a result: pass, fail, or skip with the reason
// (a feature the back-end does not offer, or a write that was not allowed).
//
// What it writes: nothing unless Options.Destructive. Then writes go only to
// a scratch range, the last 256 KiB of the disk, whose contents are read
// before the first write and written back (and flushed) at the end. A
// back-end that crashes mid-run, or ignores a sector range, may still lose
// data there: do not run a destructive suite on a disk you cannot lose.
// The one write made without Options.Destructive is on a read-only device:
// sector 0 is written with the bytes just read from it, and must be refused.
package conformance

import (
	"errors"
	"fmt"
	"time"

	"github.com/nvblk/nvblk/vhostuser/frontend"
)

// Outcome is a check's result.
type Outcome string

// Outcomes.
const (
	Pass Outcome = "pass"
	Fail Outcome = "fail"
	Skip Outcome = "skip"
)

// Result is one named check's outcome; Detail says why it failed or was
// skipped, or what was seen.
type Result struct {
	Name    string  `json:"name"`
	Outcome Outcome `json:"result"`
	Detail  string  `json:"detail,omitempty"`
}

// Report is a whole run.
type Report struct {
	Socket      string   `json:"socket"`
	Destructive bool     `json:"destructive"`
	Features    uint64   `json:"features"`          // virtio features offered
	Protocol    uint64   `json:"protocol_features"` // protocol features offered
	Capacity    uint64   `json:"capacity"`          // 512-byte sectors
	BlockSize   uint32   `json:"blk_size"`          // logical block size, bytes
	Results     []Result `json:"checks"`
}

// Failed returns the failed checks.
func (r *Report) Failed() []Result {
	var out []Result
	for _, res := range r.Results {
		if res.Outcome == Fail {
			out = append(out, res)
		}
	}
	return out
}

// Outcomes maps each check name to its outcome.
func (r *Report) Outcomes() map[string]Outcome {
	m := make(map[string]Outcome, len(r.Results))
	for _, res := range r.Results {
		m[res.Name] = res.Outcome
	}
	return m
}

// Options configure Run.
type Options struct {
	// Destructive allows writes to the scratch range (see the package
	// documentation); without it every check that writes is skipped.
	Destructive bool
	// Timeout bounds each request and each protocol reply; default 5s.
	Timeout time.Duration
}

// ErrUnreachable is returned when the socket cannot be connected to, or
// the back-end does not complete the first handshake: there is nothing to
// check.
var ErrUnreachable = errors.New("conformance: back-end unreachable")

// scratchBytes is the size of the range at the end of the disk that a
// destructive run writes.
const scratchBytes = 256 << 10

// Run checks the back-end listening on socket. The error is only for a
// back-end that cannot be reached at all; failed checks are in the Report.
func Run(socket string, o Options) (*Report, error) {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	s := &suite{socket: socket, opts: o, rep: &Report{Socket: socket, Destructive: o.Destructive}}
	if err := s.probe(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, socket, err)
	}
	s.backupScratch()
	for _, c := range checks {
		c(s)
	}
	s.restoreScratch()
	return s.rep, nil
}

// suite is one run's state. It is used from one goroutine.
type suite struct {
	socket string
	opts   Options
	rep    *Report

	offered  uint64 // GET_FEATURES
	protocol uint64 // GET_PROTOCOL_FEATURES
	config   []byte // GET_CONFIG at connect
	capacity uint64 // 512-byte sectors
	blkSize  uint32 // bytes
	queues   int    // GET_QUEUE_NUM, 1 without MQ

	scratch    uint64 // first sector of the scratch range
	scratchOK  bool   // destructive checks may write the scratch range
	scratchWhy string // why they may not
	backup     []byte // the scratch range before the first write
}

func (s *suite) record(name string, v verdict) {
	s.rep.Results = append(s.rep.Results, Result{Name: name, Outcome: v.outcome, Detail: v.detail})
}

// verdict is a check's outcome and detail.
type verdict struct {
	outcome Outcome
	detail  string
}

func pass() verdict                             { return verdict{outcome: Pass} }
func passf(format string, a ...any) verdict     { return verdict{Pass, fmt.Sprintf(format, a...)} }
func failf(format string, a ...any) verdict     { return verdict{Fail, fmt.Sprintf(format, a...)} }
func skipf(format string, a ...any) verdict     { return verdict{Skip, fmt.Sprintf(format, a...)} }
func errVerdict(what string, err error) verdict { return failf("%s: %v", what, err) }

func (s *suite) has(f uint64) bool              { return s.offered&f != 0 }
func (s *suite) protoHas(p uint64) bool         { return s.protocol&p != 0 }
func (s *suite) notOffered(name string) verdict { return skipf("not offered: %s", name) }
func (s *suite) sectorsPerBlock() uint64        { return uint64(s.blkSize / frontend.SectorSize) }
func (s *suite) timeout() time.Duration         { return s.opts.Timeout }

// needScratch reports whether writes to the scratch range are allowed, and
// the skip verdict if not.
func (s *suite) needScratch() (verdict, bool) { return skipf("%s", s.scratchWhy), s.scratchOK }
