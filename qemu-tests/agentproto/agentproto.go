// Package agentproto is the wire format between the host test harness
// (qemu-tests/guest) and the guest agent (qemu-tests/agent): a script of steps
// baked into the initramfs, and one report line per step on the agent's own
// serial port.
package agentproto

import "encoding/json"

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
	OpWait         = "wait"          // Path appears within TimeoutMS
	OpRead         = "read"          // Path's content -> ReadData
	OpWrite        = "write"         // Data, or else Value, into Path (sysfs/proc attribute, or file fsynced)
	OpList         = "list"          // Path's directory entries -> []string
	OpMakeBTT      = "make-btt"      // kernel BTT on Namespace through sysfs -> MakeBTTData
	OpWriteSectors = "write-sectors" // Data at LBA*SectorSize of Device, fsynced
	OpReadSectors  = "read-sectors"  // Count sectors from LBA -> []SectorDigest
	OpExec         = "exec"          // Argv -> ExecData; fails on a non-zero exit
	OpMount        = "mount"         // Source on Target as FSType with Options
	OpUmount       = "umount"        // Target
	OpSync         = "sync"          // sync(2)
)

// Ops that only appear in reports.
const (
	OpBoot    = "boot"    // agent started; data is BootData
	OpModules = "modules" // modules loaded; data is the list
	OpDone    = "done"    // every step ran; the agent powers off next
	OpPanic   = "panic"   // the agent panicked; it powers off next
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
