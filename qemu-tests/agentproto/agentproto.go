// Package agentproto is the wire format between the host test harness
// (qemu-tests/guest) and the guest agent (qemu-tests/agent): a script of steps
// baked into the initramfs, and one report line per step on the agent's own
// serial port.
package agentproto

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
)

// ScriptPath is where the harness puts the script inside the initramfs.
const ScriptPath = "/nvblk-script.json"

// ModuleListPath lists, one per line and in load order, the kernel modules
// the agent inserts before running the script.
const ModuleListPath = "/etc/nvblk-modules"

// ReportPrefix starts every report line, so that reports can be picked out
// of a console that the kernel writes to as well.
const ReportPrefix = "NVBLK-AGENT "

// Ops the agent understands.
const (
	OpWait         = "wait"          // Path appears (holds Value, when given) within TimeoutMS
	OpRead         = "read"          // Path's content -> ReadData, with its text up to Size bytes (4096 when zero)
	OpWrite        = "write"         // Data, or else Value, into Path (sysfs/proc attribute, or file fsynced)
	OpList         = "list"          // Path's directory entries -> []string
	OpMakeBTT      = "make-btt"      // kernel BTT on Namespace through sysfs -> MakeBTTData
	OpWriteSectors = "write-sectors" // Data at LBA*SectorSize of Device, fsynced
	OpReadSectors  = "read-sectors"  // Count sectors from LBA -> []SectorDigest
	OpExec         = "exec"          // Argv, stdout to Stdout if given -> ExecData; fails on a non-zero exit
	OpMount        = "mount"         // Source on Target as FSType with Options
	OpUmount       = "umount"        // Target
	OpSync         = "sync"          // sync(2)

	// Block-device and virtio-blk steps.
	OpFlush        = "flush"          // fsync(2) of Device: a virtio-blk FLUSH
	OpDiscard      = "discard"        // BLKDISCARD of Count sectors from LBA
	OpZeroOut      = "zero-out"       // BLKZEROOUT of Count sectors from LBA
	OpCheckSectors = "check-sectors"  // Count sectors from LBA against Pattern(Seed) -> CheckData
	OpParallel     = "parallel-write" // Count sectors of Pattern(Seed) from LBA by Workers pinned goroutines -> []WorkerData
	OpWaitGone     = "wait-gone"      // Path disappears within TimeoutMS

	// File-system and root steps.
	OpCopy       = "copy"        // Path to Target, mode 0755, fsynced
	OpWriteTree  = "write-tree"  // Tree(Seed, Count) under Path -> []FileDigest
	OpHashTree   = "hash-tree"   // every regular file under Path -> []FileDigest
	OpRootMount  = "root-mount"  // the mount of "/" -> RootMountData; fails unless its source is Device
	OpSwitchRoot = "switch-root" // mount Source on Target, make it "/", exec Path (default /sbin/init)

	// Reliability steps.
	OpSeqWrite = "seq-write" // Count sectors of Pattern(Seed) from LBA, each once, by Workers O_DIRECT writers -> SeqWriteData

	// A back-end serving from inside the guest.
	OpSpawn = "spawn" // start Argv in the background as Name, stdout and stderr to Path -> SpawnData
	OpStop  = "stop"  // send signal Value (TERM, INT, KILL) to spawned Name, wait for its exit -> ExecData
	// OpVhostVerify drives a vhost-user-blk back-end's socket (Path) from
	// inside the guest, as QEMU would: Count sectors of Pattern(Seed)
	// from LBA written (unless ReadOnly) Chunk sectors per request,
	// Workers requests in flight, a FLUSH if the device offers one, then
	// every sector read back and compared -> VerifyData. With Name and
	// KillAt it SIGKILLs the spawned back-end Name once KillAt (a
	// fraction) of the sectors were acknowledged, with writes in flight,
	// and stops there.
	OpVhostVerify = "vhost-verify"

	// Live-migration steps.
	//
	// OpStreamWrite streams O_DSYNC writes while the machine runs, and
	// migrates: Workers writers (1 when zero), writer w owning the ring
	// of Count/Workers sectors from LBA + w*Count/Workers, write their
	// sequence numbers 0, 1, 2, ... in turn, seq n into ring slot n mod
	// the ring's size as StreamSector(Seed, w, n, lba), each write read
	// back (O_DIRECT) and compared at once, and again a ring later just
	// before it is overwritten. After every Chunk writes (64
	// when zero) a writer reports OpStreamProgress. With Path the
	// writers stop once the number at the start of that file grows
	// (/sys/firmware/acpi/interrupts/ff_pwr_btn counts ACPI power-button
	// presses: QMP system_powerdown), and TimeoutMS passing first is an
	// error; without Path they stop after TimeoutMS. Then every ring
	// slot written is read back and must hold its last write; any I/O
	// error or mismatch fails the step -> StreamData.
	OpStreamWrite = "stream-write"
)

// Ops that only appear in reports.
const (
	OpBoot    = "boot"    // agent started; data is BootData
	OpModules = "modules" // modules loaded; data is the list
	OpDone    = "done"    // every step ran; the agent powers off next
	OpPanic   = "panic"   // the agent panicked; it powers off next
	// OpProgress is a step's account while it runs (Step -1, so that a
	// step's own report stays the only one with its index); data is
	// ProgressData.
	OpProgress = "progress"
	// OpStreamProgress is a stream-write writer's account while it runs
	// (Step -1); data is StreamProgressData.
	OpStreamProgress = "stream-progress"
)

// Step is one thing for the agent to do. Which fields matter depends on Op.
type Step struct {
	Op         string   `json:"op"`
	Path       string   `json:"path,omitempty"`
	Value      string   `json:"value,omitempty"`
	TimeoutMS  int      `json:"timeout_ms,omitempty"`
	Namespace  string   `json:"namespace,omitempty"`
	Region     string   `json:"region,omitempty"`
	UUID       string   `json:"uuid,omitempty"`
	Device     string   `json:"device,omitempty"`
	SectorSize int      `json:"sector_size,omitempty"`
	LBA        uint64   `json:"lba,omitempty"`
	CPU        *int     `json:"cpu,omitempty"` // write-sectors: run on this CPU (the kernel's BTT picks its lane by CPU)
	Count      int      `json:"count,omitempty"`
	Data       []byte   `json:"data,omitempty"`
	Argv       []string `json:"argv,omitempty"`
	Source     string   `json:"source,omitempty"`
	Target     string   `json:"target,omitempty"`
	FSType     string   `json:"fstype,omitempty"`
	Options    string   `json:"options,omitempty"`
	// Seed names generated content (Pattern, Tree) so that scripts stay
	// small and the host can compute the same bytes. write-sectors and
	// write use it when Data is empty.
	Seed    string `json:"seed,omitempty"`
	Size    int    `json:"size,omitempty"`    // write with Seed: bytes of Pattern(Seed, 0..); read: the most bytes of text reported
	Workers int    `json:"workers,omitempty"` // parallel-write goroutines, worker i pinned to CPU i mod NumCPU; seq-write writers
	Chunk   int    `json:"chunk,omitempty"`   // parallel-write sectors per write; 1 when zero; seq-write writes per fsync
	// Pin pins seq-write's writer i to CPU i mod NumCPU, as parallel-write
	// always does: blk-mq maps the submitting CPU to a hardware queue, so
	// with as many queues as CPUs every queue carries writes.
	Pin bool `json:"pin,omitempty"`
	// OldSeed: check-sectors counts a sector holding Pattern(OldSeed)
	// as old rather than as a mismatch, for a write that may have been
	// cut short: every sector must be wholly one or the other.
	OldSeed string `json:"old_seed,omitempty"`
	// Name is the handle of a spawned program, for stop and for
	// vhost-verify's kill.
	Name string `json:"name,omitempty"`
	// Stdout sends exec's standard output to a guest file (a program's
	// binary output, too big for a report); without it, it is reported.
	Stdout string `json:"stdout,omitempty"`
	// KillAt times vhost-verify's SIGKILL of Name by the writes'
	// progress, not by the clock, so that it lands among the writes
	// however fast the emulated CPU runs today.
	KillAt float64 `json:"kill_at,omitempty"`
	// ReadOnly makes vhost-verify only read and compare.
	ReadOnly bool `json:"read_only,omitempty"`
	// ExpectError turns a step inside out: it succeeds only by failing
	// with an error containing one of these strings (case-insensitive),
	// which is reported as ExpectedErrorData.
	ExpectError []string `json:"expect_error,omitempty"`
}

// Report is one line the agent writes after ReportPrefix.
type Report struct {
	Step  int             `json:"step"` // index into the script; -1 for boot/modules/done/panic
	Op    string          `json:"op"`
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	MS    int64           `json:"ms"` // how long the step took
	Data  json.RawMessage `json:"data,omitempty"`
}

// BootData is what the agent knows when it starts.
type BootData struct {
	UptimeSeconds float64 `json:"uptime_s"` // kernel's /proc/uptime when /init began
	Kernel        string  `json:"kernel"`   // uname -r
}

// ReadData is the content of a file: the text when it is short, and always
// its size and SHA-256.
type ReadData struct {
	Text   string `json:"text,omitempty"`
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

// MakeBTTData tells which devices the kernel created.
type MakeBTTData struct {
	BTT   string   `json:"btt"`   // e.g. btt0.0
	Block string   `json:"block"` // e.g. pmem0s
	Trace []string `json:"trace"` // the sysfs writes, in order
}

// SectorDigest identifies one sector's content without sending it.
type SectorDigest struct {
	LBA    uint64 `json:"lba"`
	SHA256 string `json:"sha256"`
	Zero   bool   `json:"zero"`
	Head   string `json:"head"` // first 16 bytes, hex, for failure messages
}

// ExecData is what a program did.
type ExecData struct {
	Exit   int    `json:"exit"`
	Output string `json:"output"`
}

// SpawnData names a program started in the background.
type SpawnData struct {
	PID int `json:"pid"`
}

// VerifyData is what vhost-verify did through the socket.
type VerifyData struct {
	Written  int  `json:"written"`  // sectors written and acknowledged
	Verified int  `json:"verified"` // sectors read back equal to their pattern
	Requests int  `json:"requests"`
	Flushed  bool `json:"flushed"` // a FLUSH followed the writes (the device offered one)
	// Killed says the back-end was SIGKILLed among the writes: then
	// nothing was flushed or read back, AckedPrefix sectors from LBA
	// had all been acknowledged, InFlight requests were submitted but
	// not acknowledged, and no sector from LBA+Submitted on was sent.
	Killed      bool   `json:"killed,omitempty"`
	Submitted   int    `json:"submitted,omitempty"`
	AckedPrefix int    `json:"acked_prefix,omitempty"`
	InFlight    int    `json:"in_flight,omitempty"`
	Log         string `json:"log,omitempty"` // the killed back-end's log
	Capacity    uint64 `json:"capacity"`      // the device's, in 512-byte sectors
	WriteMS     int64  `json:"write_ms"`
	ReadMS      int64  `json:"read_ms"`
}

// ExpectedErrorData is what a step with ExpectError reports when it failed
// as expected.
type ExpectedErrorData struct {
	Error string `json:"error"`
}

// CheckData is what check-sectors found.
type CheckData struct {
	Checked int `json:"checked"`
	Old     int `json:"old,omitempty"` // sectors holding Pattern(OldSeed)
	// With OldSeed: the first sector holding the old pattern and the
	// last holding the new one, which place a cut-short sequential write.
	FirstOld   *uint64  `json:"first_old,omitempty"`
	LastNew    *uint64  `json:"last_new,omitempty"`
	Differ     int      `json:"differ,omitempty"`
	Mismatches []uint64 `json:"mismatches,omitempty"` // LBAs, at most 32
	Heads      []string `json:"heads,omitempty"`      // first 16 bytes of each mismatch, hex
}

// WorkerData is one parallel-write goroutine's, or one seq-write
// writer's, account.
type WorkerData struct {
	Worker int   `json:"worker"`
	Pinned int   `json:"pinned"` // the CPU it was pinned to; -1 for an unpinned seq-write writer
	CPUs   []int `json:"cpus"`   // the CPUs it found itself on after its writes (getcpu)
	Writes int   `json:"writes"`
	LBAs   int   `json:"lbas"`
}

// ProgressData is one progress report of a seq-write writer: the sectors
// whose writes completed since its previous report (the guest saw them
// acknowledged), and whether an fsync (a virtio-blk FLUSH) followed them.
type ProgressData struct {
	Step   int      `json:"step"`
	Worker int      `json:"worker"`
	LBAs   []uint64 `json:"lbas"`
	Synced bool     `json:"synced"`
}

// SeqWriteData is what seq-write did.
type SeqWriteData struct {
	Sectors int `json:"sectors"` // writes acknowledged
	Fsyncs  int `json:"fsyncs"`
	// SlowestMS is the longest single write: a back-end restart shows as
	// a write that waited for it.
	SlowestMS int64 `json:"slowest_ms"`
	// Writers is each writer's account: where it was pinned and the CPUs
	// it found itself on after its writes (getcpu).
	Writers []WorkerData `json:"writers"`
}

// StreamProgressData is one stream-write writer's progress: Writes of
// its writes were acknowledged and read back so far.
type StreamProgressData struct {
	Step   int `json:"step"`
	Worker int `json:"worker"`
	Writes int `json:"writes"`
}

// StreamData is what stream-write did.
type StreamData struct {
	Writes int `json:"writes"` // acknowledged, each read back at once
	// Rechecked is the writes read back again a ring later, just
	// before being overwritten.
	Rechecked int `json:"rechecked"`
	// Verified is the ring slots read back after the last write, each
	// found holding its writer's last write there.
	Verified int `json:"verified"`
	// SlowestMS is the longest write with its read-back, by the guest's
	// clock: a back-end that stalls shows here.
	SlowestMS int64          `json:"slowest_ms"`
	Writers   []StreamWriter `json:"writers"`
	// Stopped says why the writers stopped: "signal" (Path's count
	// grew) or "time".
	Stopped string `json:"stopped"`
}

// StreamWriter is one stream-write writer's ring and count.
type StreamWriter struct {
	Worker  int    `json:"worker"`
	LBA     uint64 `json:"lba"`     // the ring's first sector
	Sectors int    `json:"sectors"` // the ring's size
	Writes  int    `json:"writes"`  // seq 0..Writes-1 were written
	// Rechecked is the writes read back before being overwritten:
	// Writes - Sectors, or none in a ring never filled.
	Rechecked int `json:"rechecked"`
}

// StreamSlot is the sector the writer's write seq lands on.
func (w StreamWriter) StreamSlot(seq uint64) uint64 { return w.LBA + seq%uint64(w.Sectors) }

// LastSeq is the sequence number ring slot i holds after the writer's
// Writes writes; ok is false for a slot never written.
func (w StreamWriter) LastSeq(i int) (seq uint64, ok bool) {
	if i >= w.Writes {
		return 0, false
	}
	return uint64(i + (w.Writes-1-i)/w.Sectors*w.Sectors), true
}

// streamMagic starts every stream-write sector.
const streamMagic = "NVBLKSEQ"

// StreamHeader is the self-describing head of a stream-write sector:
// magic, then little-endian worker, seq and lba, each 8 bytes.
const StreamHeader = 32

// StreamSector is the content of writer worker's write seq, at lba: a
// header naming all three, so that a sector read back says which write
// it holds, then bytes only (seed, worker, seq) produce.
func StreamSector(seed string, worker int, seq, lba uint64, sectorSize int) []byte {
	b := Pattern(seed+"/w"+strconv.Itoa(worker), seq, sectorSize)
	copy(b, streamMagic)
	binary.LittleEndian.PutUint64(b[8:], uint64(worker))
	binary.LittleEndian.PutUint64(b[16:], seq)
	binary.LittleEndian.PutUint64(b[24:], lba)
	return b
}

// ParseStreamHeader reads the header of a stream-write sector: which
// writer's write seq, for which lba, it says it is. ok is false when b
// does not start with one.
func ParseStreamHeader(b []byte) (worker, seq, lba uint64, ok bool) {
	if len(b) < StreamHeader || string(b[:8]) != streamMagic {
		return 0, 0, 0, false
	}
	return binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[24:]), true
}

// DescribeStreamSector says which stream-write write a sector holds,
// for failure messages.
func DescribeStreamSector(b []byte) string {
	worker, seq, lba, ok := ParseStreamHeader(b)
	if !ok {
		if len(b) > 16 {
			b = b[:16]
		}
		return fmt.Sprintf("no stream write (starts %x)", b)
	}
	return fmt.Sprintf("writer %d's seq %d for lba %d", worker, seq, lba)
}

// FileDigest identifies one file of a tree.
type FileDigest struct {
	Path   string `json:"path"` // relative to the tree's root
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

// RootMountData is the line of /proc/self/mountinfo that mounts "/".
type RootMountData struct {
	Source string `json:"source"`
	FSType string `json:"fstype"`
	Line   string `json:"line"`
}

// Pattern is one sector of content that only (seed, lba) produces, so that
// a sector read from the wrong place, or left over from another run,
// cannot pass for the right one.
func Pattern(seed string, lba uint64, sectorSize int) []byte {
	h := sha256.Sum256([]byte(seed + "/" + strconv.FormatUint(lba, 10)))
	b := make([]byte, sectorSize)
	_, _ = rand.NewChaCha8(h).Read(b)
	return b
}

// Patterns is Pattern for count sectors from lba, end to end.
func Patterns(seed string, lba uint64, count, sectorSize int) []byte {
	b := make([]byte, 0, count*sectorSize)
	for i := 0; i < count; i++ {
		b = append(b, Pattern(seed, lba+uint64(i), sectorSize)...)
	}
	return b
}

// TreeFile is one file of a generated tree; its content is
// Patterns(seed+"/"+Path, 0, ...) cut to Size.
type TreeFile struct {
	Path string
	Size int
}

// treeSizes mixes the sizes a file system treats differently: empty,
// inline-small, one byte either side of a block, and multi-extent.
var treeSizes = []int{0, 1, 100, 4095, 4096, 4097, 65536, 300_000, 1 << 20}

// Tree is n files spread over nested directories, with sizes from
// treeSizes; the host and the agent both derive it from the seed.
func Tree(seed string, n int) []TreeFile {
	files := make([]TreeFile, n)
	for i := range files {
		dir := fmt.Sprintf("d%d", i%4)
		if i%3 == 0 {
			dir += fmt.Sprintf("/sub%d/deeper", i%2)
		}
		files[i] = TreeFile{Path: fmt.Sprintf("%s/f%03d.bin", dir, i), Size: treeSizes[i%len(treeSizes)]}
	}
	return files
}

// Content is the file's bytes.
func (f TreeFile) Content(seed string) []byte {
	return PatternBytes(seed+"/"+f.Path, f.Size)
}

// PatternBytes is size bytes of Patterns(seed, 0, ...).
func PatternBytes(seed string, size int) []byte {
	const unit = 4096
	return Patterns(seed, 0, (size+unit-1)/unit, unit)[:size]
}
