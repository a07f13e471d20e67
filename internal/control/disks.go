package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Disks is what the control socket of a serve with many disks manages:
// `nvblk serve --disk`. cmd/nvblk implements it over blkserve.Set; the
// spec syntax is its, the control socket passes it on as given.
type Disks interface {
	// Add parses spec (name=...,blk-file=...,socket-path=...) and serves
	// the disk it names.
	Add(spec string) (DiskInfo, error)
	// Remove stops serving the disk; with mode "drain" it waits for the
	// front-end to leave until ctx ends.
	Remove(ctx context.Context, name string, mode RemoveMode) error
	// List returns every disk served, by name, with its server.
	List() []Disk
}

// RemoveMode is disk-remove's mode: what to do when a guest is attached.
type RemoveMode string

// The modes of disk-remove.
const (
	RemoveRefuse RemoveMode = ""      // refuse a disk with a front-end attached
	RemoveForce  RemoveMode = "force" // drop the front-end and remove
	RemoveDrain  RemoveMode = "drain" // wait for the front-end to leave
)

// Disk is one disk of a Disks: what the operator is told about it and the
// server its counters come from.
type Disk struct {
	Info   DiskInfo
	Target Target
}

// DiskInfo describes a served disk on the wire (disk-add, disk-list, and
// status, which adds the disk's Status).
type DiskInfo struct {
	Name       string `json:"name"`
	Image      string `json:"image"`
	Socket     string `json:"socket"`
	NumQueues  int    `json:"num_queues"`
	ReadOnly   bool   `json:"read_only"`
	Serial     string `json:"serial"`
	Durability string `json:"durability"` // the resolved mode: flush, sync or dax
	Kind       string `json:"kind"`       // the medium: file, block device, devdax
	Sectors    uint64 `json:"sectors"`
	SectorSize uint32 `json:"sector_size"`
	Attached   bool   `json:"attached"` // a vhost-user front-end is being served
	// Error says why the disk stopped serving on its own; remove it.
	Error  string  `json:"error,omitempty"`
	Status *Status `json:"status,omitempty"`
}

// Bounds of disk-remove's drain.
const (
	DefaultDrainTimeout = 30 * time.Second
	// MaxDrainTimeout bounds how long one request may hold a control
	// connection and its descriptor.
	MaxDrainTimeout = 10 * time.Minute
)

// NewDisksServer answers control requests for every disk of d: status and
// disk-list list them all, stats and detach take a disk name, disk-add and
// disk-remove change the set. Close stops it.
func NewDisksServer(d Disks, o Options) *Server {
	return newServer(nil, d, o)
}

// targets are the disks the server reports on: its one Target, unnamed, or
// every disk of its Disks.
func (s *Server) targets() []Disk {
	if s.disks == nil {
		return []Disk{{Target: s.t}}
	}
	return s.disks.List()
}

// handleDisks answers the requests of a server over Disks.
func (s *Server) handleDisks(req Request) Reply {
	switch req.Cmd {
	case "status":
		disks := s.disks.List()
		out := make([]DiskInfo, 0, len(disks))
		for _, d := range disks {
			st := s.status(d.Target)
			d.Info.Status = &st
			d.Info.Attached = st.Connected
			out = append(out, d.Info)
		}
		return Reply{OK: true, Disks: out}
	case "stats", "detach":
		d, err := s.disk(req)
		if err != nil {
			return Reply{Error: err.Error()}
		}
		if req.Cmd == "stats" {
			st := d.Target.Stats()
			return Reply{OK: true, Stats: &st}
		}
		det := d.Target.Detach()
		return Reply{OK: true, Detached: &det}
	case "disk-list":
		disks := s.disks.List()
		out := make([]DiskInfo, 0, len(disks))
		for _, d := range disks {
			d.Info.Attached = d.Target.Stats().Connected
			out = append(out, d.Info)
		}
		return Reply{OK: true, Disks: out}
	case "disk-add":
		if req.Spec == "" {
			return Reply{Error: `disk-add: missing "spec" (name=NAME,blk-file=FILE,socket-path=PATH[,...])`}
		}
		info, err := s.disks.Add(req.Spec)
		if err != nil {
			return Reply{Error: err.Error()}
		}
		return Reply{OK: true, Disk: &info}
	case "disk-remove":
		return s.remove(req)
	}
	return Reply{Error: fmt.Sprintf("unknown cmd %q: want status, stats, detach, disk-add, disk-remove or disk-list", req.Cmd)}
}

// disk finds the disk a stats or detach request names.
func (s *Server) disk(req Request) (Disk, error) {
	disks := s.disks.List()
	if req.Disk == "" {
		return Disk{}, fmt.Errorf(`%s: which disk? give "disk" (served: %s)`, req.Cmd, names(disks))
	}
	for _, d := range disks {
		if d.Info.Name == req.Disk {
			return d, nil
		}
	}
	return Disk{}, fmt.Errorf("%s: no disk %q (served: %s)", req.Cmd, req.Disk, names(disks))
}

func names(disks []Disk) string {
	if len(disks) == 0 {
		return "none"
	}
	n := make([]string, len(disks))
	for i, d := range disks {
		n[i] = d.Info.Name
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

func (s *Server) remove(req Request) Reply {
	if req.Disk == "" {
		return Reply{Error: `disk-remove: missing "disk", the name of the disk to remove`}
	}
	timeout := time.Duration(0)
	switch req.Mode {
	case RemoveRefuse, RemoveForce:
		if req.Timeout != "" {
			return Reply{Error: `disk-remove: "timeout" is for mode "drain"`}
		}
	case RemoveDrain:
		timeout = DefaultDrainTimeout
		if req.Timeout != "" {
			t, err := time.ParseDuration(req.Timeout)
			if err != nil || t <= 0 || t > MaxDrainTimeout {
				return Reply{Error: fmt.Sprintf("disk-remove: timeout %q: want a duration such as 30s, at most %v", req.Timeout, MaxDrainTimeout)}
			}
			timeout = t
		}
	default:
		return Reply{Error: fmt.Sprintf(`disk-remove: mode %q: want "force", "drain" or none`, req.Mode)}
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	if timeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, timeout, fmt.Errorf("timed out after %v", timeout))
		defer stop()
	}
	// Close ends a drain at once: the serve is stopping, which removes
	// every disk anyway.
	stopOnQuit := context.AfterFunc(s.ctx, func() { cancel(errors.New("the control socket is closing")) })
	defer stopOnQuit()
	if err := s.disks.Remove(ctx, req.Disk, req.Mode); err != nil {
		return Reply{Error: err.Error()}
	}
	return Reply{OK: true}
}
