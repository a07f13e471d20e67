// Package conformance puts any vhost-user-blk back-end socket (nvblk's,
// qemu-storage-daemon's, another program's) through protocol and virtio-blk
// checks, driving it with vhostuser/frontend the way QEMU would: the handshake
// and feature negotiation, the config space, every request type with its
// data verified, the error statuses the virtio 1.2 spec (§5.2.6) demands,
// descriptor layouts a guest may use, indirect tables, EVENT_IDX,
// multiqueue, packed virtqueues (§2.8 "Packed Virtqueues") when offered,
// stopping a running ring, read-only behaviour, reconnects and the dirty
// log of a live migration.
//
// Each case has a name, the clause of the vhost-user spec (QEMU's
// docs/interop/vhost-user.rst) or of the virtio 1.2 spec it holds the
// back-end to, and a verdict: pass, fail, or skip with the reason (a feature
// the back-end does not offer, or a write that was not allowed). Cases lists
// them all.
//
// The cases are grouped by area, a file each: handshake (features and
// protocol features), config (the virtio-blk config space), requests (every
// request type, read-only devices), zeroing (discard and write zeroes),
// layouts (descriptor chains), rings (notifications, multiqueue, stopping
// and restarting), packed (the I/O again on packed virtqueues), memory
// (memory tables), session (reconnects) and migration (dirty logging);
// scratch saves and restores what a destructive run writes.
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
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"time"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// Verdict is what a case concluded.
type Verdict string

// Verdicts.
const (
	Pass Verdict = "pass"
	Fail Verdict = "fail"
	Skip Verdict = "skip"
)

// Case is one named check and the spec clause it holds a back-end to:
// vhost-user "Section name", or virtio 1.2 §N "Section name", either
// perhaps followed by the message or field it is about.
type Case struct {
	Name   string `json:"name"`
	Clause string `json:"clause"`
}

// Result is one case's verdict; Detail says why it failed or was skipped,
// or what was seen.
type Result struct {
	Case
	Verdict Verdict `json:"result"`
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

// Failed returns the failed cases.
func (r *Report) Failed() []Result {
	var out []Result
	for _, res := range r.Results {
		if res.Verdict == Fail {
			out = append(out, res)
		}
	}
	return out
}

// Verdicts maps each case name to its verdict.
func (r *Report) Verdicts() map[string]Verdict {
	m := make(map[string]Verdict, len(r.Results))
	for _, res := range r.Results {
		m[res.Name] = res.Verdict
	}
	return m
}

// Options configure Run.
type Options struct {
	// Destructive allows writes to the scratch range (see the package
	// documentation); without it every case that writes is skipped.
	Destructive bool
	// Timeout bounds each request and each protocol reply; default 5s.
	Timeout time.Duration
}

// ErrUnreachable is returned when the socket cannot be connected to, or
// the back-end does not complete the first handshake: there is nothing to
// check.
var ErrUnreachable = errors.New("conformance: back-end unreachable")

// Clauses more than one area cites, to be followed by the message, field
// or status a case is about.
const (
	frontEndMessage = `vhost-user "Front-end message types"`
	blkOperation    = `virtio 1.2 §5.2.6 "Device Operation"`
	blkDeviceMust   = `virtio 1.2 §5.2.6.2 "Device Requirements: Device Operation"`
)

// area is a group of cases one function checks, recording a result for
// each of them.
type area struct {
	cases []Case
	check func(*suite)
}

// areas run in this order, between saving and restoring the scratch range.
var areas = []area{
	{handshakeCases, checkHandshake},
	{configCases, checkConfig},
	{requestCases, checkRequests},
	{zeroingCases, checkZeroing},
	{layoutCases, checkLayouts},
	{notificationCases, checkNotifications},
	{multiqueueCases, checkMultiqueue},
	{packedCases, checkPacked},
	{memoryCases, checkMemory},
	{stopRingCases, checkStopRing},
	{readOnlyCases, checkReadOnly},
	{sessionCases, checkSession},
	{migrationCases, checkMigration},
}

// Cases lists every case the suite may report, in the order it runs them.
// A run reports each at most once; the scratch cases only in a destructive
// run that may write.
func Cases() []Case {
	out := []Case{scratchBackup}
	for _, a := range areas {
		out = append(out, a.cases...)
	}
	return append(out, scratchRestore)
}

// Run checks the back-end listening on socket. The error is only for a
// back-end that cannot be reached at all; failed cases are in the Report.
func Run(socket string, o Options) (*Report, error) {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	s := &suite{socket: socket, opts: o, rep: &Report{Socket: socket, Destructive: o.Destructive}, clauses: map[string]string{}}
	for _, c := range Cases() {
		s.clauses[c.Name] = c.Clause
	}
	if err := s.probe(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, socket, err)
	}
	s.backupScratch()
	for _, a := range areas {
		a.check(s)
	}
	s.restoreScratch()
	return s.rep, nil
}

// suite is one run's state. It is used from one goroutine.
type suite struct {
	socket  string
	opts    Options
	rep     *Report
	clauses map[string]string // case name to clause, for record

	offered  uint64 // GET_FEATURES
	protocol uint64 // GET_PROTOCOL_FEATURES
	config   []byte // GET_CONFIG at connect
	capacity uint64 // 512-byte sectors
	blkSize  uint32 // bytes
	queues   int    // GET_QUEUE_NUM, 1 without MQ

	scratch    uint64 // first sector of the scratch range
	scratchOK  bool   // destructive cases may write the scratch range
	scratchWhy string // why they may not
	backup     []byte // the scratch range before the first write
}

// probe reads what the back-end offers, with a connection of its own.
func (s *suite) probe() error {
	c, err := frontend.Dial(s.socket)
	if err != nil {
		return err
	}
	c.Timeout = s.timeout()
	s.offered, err = c.GetU64(vhostuser.ReqGetFeatures)
	if err == nil && s.has(vhostuser.FeatureProtocolFeatures) {
		s.protocol, err = c.GetU64(vhostuser.ReqGetProtocolFeatures)
	}
	c.Close()
	if err != nil {
		return err
	}
	d, err := s.connect(frontend.Options{})
	if err != nil {
		return err
	}
	defer d.Close()
	s.config, s.queues = d.Config, 1
	if len(s.config) < virtio.BlkConfigSizeWriteZeroes {
		return fmt.Errorf("GET_CONFIG gave %d bytes (is VHOST_USER_PROTOCOL_F_CONFIG offered?)", len(s.config))
	}
	le := binary.LittleEndian
	s.capacity = le.Uint64(s.config[virtio.BlkCfgCapacity:])
	s.blkSize = virtio.BlkSectorSize
	if s.has(virtio.BlkFBlkSize) {
		if bs := le.Uint32(s.config[virtio.BlkCfgBlkSize:]); bs >= 512 && bs <= 1<<16 && bs&(bs-1) == 0 {
			s.blkSize = bs
		}
	}
	if s.protoHas(vhostuser.ProtoMQ) {
		n, err := d.Conn.GetU64(vhostuser.ReqGetQueueNum)
		if err != nil {
			return err
		}
		s.queues = int(min(n, 64))
	}
	s.rep.Features, s.rep.Protocol, s.rep.Capacity, s.rep.BlockSize = s.offered, s.protocol, s.capacity, s.blkSize
	s.chooseScratch()
	return nil
}

func (s *suite) record(name string, f finding) {
	s.rep.Results = append(s.rep.Results, Result{Case: Case{Name: name, Clause: s.clauses[name]}, Verdict: f.verdict, Detail: f.detail})
}

// finding is a case's verdict and detail, before record names it.
type finding struct {
	verdict Verdict
	detail  string
}

func pass() finding                             { return finding{verdict: Pass} }
func passf(format string, a ...any) finding     { return finding{Pass, fmt.Sprintf(format, a...)} }
func failf(format string, a ...any) finding     { return finding{Fail, fmt.Sprintf(format, a...)} }
func skipf(format string, a ...any) finding     { return finding{Skip, fmt.Sprintf(format, a...)} }
func errFinding(what string, err error) finding { return failf("%s: %v", what, err) }

func (s *suite) has(f uint64) bool              { return s.offered&f != 0 }
func (s *suite) protoHas(p uint64) bool         { return s.protocol&p != 0 }
func (s *suite) notOffered(name string) finding { return skipf("not offered: %s", name) }
func (s *suite) sectorsPerBlock() uint64        { return uint64(s.blkSize / virtio.BlkSectorSize) }
func (s *suite) timeout() time.Duration         { return s.opts.Timeout }

func featureName(f uint64) string {
	switch f {
	case virtio.BlkFWriteZeroes:
		return "VIRTIO_BLK_F_WRITE_ZEROES"
	case virtio.BlkFDiscard:
		return "VIRTIO_BLK_F_DISCARD"
	case virtio.BlkFRO:
		return "VIRTIO_BLK_F_RO"
	case virtio.FRingIndirectDesc:
		return "VIRTIO_RING_F_INDIRECT_DESC"
	case virtio.FRingEventIdx:
		return "VIRTIO_RING_F_EVENT_IDX"
	case virtio.FRingPacked:
		return "VIRTIO_F_RING_PACKED"
	}
	return fmt.Sprintf("feature %#x", f)
}

// caseNames lists the names of cases, for group.
func caseNames(cases []Case) []string {
	out := make([]string, len(cases))
	for i, c := range cases {
		out[i] = c.Name
	}
	return out
}

// casesOf lists the cases of a table check's rows.
func casesOf[R any](rows []R, c func(R) Case) []Case {
	out := make([]Case, len(rows))
	for i, r := range rows {
		out[i] = c(r)
	}
	return out
}

// withDev runs fn on a fresh connection; a failed connection is the finding.
func (s *suite) withDev(o frontend.Options, fn func(d *dev) finding) finding {
	d, err := s.connect(o)
	if err != nil {
		return errFinding("connect", err)
	}
	f := fn(d)
	if err := d.Close(); err != nil && f.verdict == Pass {
		return errFinding("stopping the rings (GET_VRING_BASE) after the check", err)
	}
	return f
}

// group runs fn on a fresh connection; fn records each named result. If
// the connection fails, every name fails with that error.
func (s *suite) group(o frontend.Options, names []string, fn func(d *dev)) {
	d, err := s.connect(o)
	if err != nil {
		for _, n := range names {
			s.record(n, errFinding("connect", err))
		}
		return
	}
	fn(d)
	d.Close()
}

func pattern(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}
