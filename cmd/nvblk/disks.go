package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhostuser"
)

func init() {
	register(&command{name: "disk", summary: "add, remove or list the disks of a running nvblk serve --disk (over its control socket)",
		usage: "add --control-socket PATH name=NAME,blk-file=FILE,socket-path=PATH[,num-queues=N][,read-only=on][,serial=S][,durability=MODE] | " +
			"remove --control-socket PATH NAME [--force | --drain [--timeout 30s]] | list --control-socket PATH [--json]",
		run: runDisk})
	flagSets["disk"] = func() *flag.FlagSet { fs, _ := diskFlags("disk", ""); return fs }
}

// diskKeys are the keys of a disk spec, in the order a spec is written.
var diskKeys = []string{"name", "blk-file", "socket-path", "num-queues", "read-only", "serial", "durability"}

// diskName is what a disk may be called: it is a Prometheus label value,
// a log field and a command-line word, so nothing that needs quoting.
var diskName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// splitSpec splits a key=value,key=value spec the way qemu-storage-daemon
// splits --export: a comma in a value is written doubled (",,").
func splitSpec(s string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == ',' && i+1 < len(s) && s[i+1] == ',':
			cur.WriteByte(',')
			i++
		case s[i] == ',':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	return append(parts, cur.String())
}

// parseDiskSpec reads one disk: `serve --disk` and `disk add`. Every key
// is checked here, before anything is opened; name, blk-file and
// socket-path are required, the others take serve's defaults.
func parseDiskSpec(s string) (blkserve.Spec, error) {
	spec := blkserve.Spec{NumQueues: uint16(defaultServeQueues), Durability: pmem.DurabilityAuto}
	seen := map[string]bool{}
	for _, kv := range splitSpec(s) {
		key, val, ok := strings.Cut(kv, "=")
		switch {
		case kv == "":
			return spec, usagef("disk %q: empty key=value (a comma in a value is written ,,)", s)
		case !ok:
			return spec, usagef("disk %q: %q is not key=value", s, kv)
		case seen[key]:
			return spec, usagef("disk %q: %s given twice", s, key)
		}
		seen[key] = true
		var err error
		switch key {
		case "name":
			if !diskName.MatchString(val) {
				return spec, usagef("disk %q: name %q: want 1 to 64 letters, digits, '.', '_' or '-', not starting with a punctuation mark", s, val)
			}
			spec.Name = val
		case "blk-file":
			spec.Image = val
		case "socket-path":
			spec.Socket = val
		case "num-queues":
			n, perr := strconv.ParseUint(val, 10, 16)
			if perr != nil || n < 1 || n > maxServeQueues {
				return spec, usagef("disk %q: num-queues %q: want 1..%d", s, val, maxServeQueues)
			}
			spec.NumQueues = uint16(n)
		case "read-only":
			if spec.ReadOnly, err = parseOnOff(val); err != nil {
				return spec, usagef("disk %q: read-only %q: want on or off", s, val)
			}
		case "serial":
			if len(val) > 20 {
				return spec, usagef("disk %q: serial %q: at most 20 bytes", s, val)
			}
			spec.Serial = val
		case "durability":
			if spec.Durability, err = parseDurability(val); err != nil || val == "" {
				return spec, usagef("disk %q: durability %q: want auto, flush, sync or dax", s, val)
			}
		default:
			return spec, usagef("disk %q: unknown key %q: want %s", s, key, strings.Join(diskKeys, ", "))
		}
	}
	for _, req := range []struct{ key, val string }{{"name", spec.Name}, {"blk-file", spec.Image}, {"socket-path", spec.Socket}} {
		if req.val == "" {
			return spec, usagef("disk %q: missing %s= (name, blk-file and socket-path are required)", s, req.key)
		}
	}
	return spec, nil
}

func parseOnOff(v string) (bool, error) {
	switch v {
	case "on", "true", "yes":
		return true, nil
	case "off", "false", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q: want on or off", v)
}

// formatDiskSpec writes spec back as parseDiskSpec reads it: what `disk
// add` sends, with the paths made absolute in the caller's directory.
func formatDiskSpec(spec blkserve.Spec) string {
	esc := func(v string) string { return strings.ReplaceAll(v, ",", ",,") }
	parts := []string{"name=" + spec.Name, "blk-file=" + esc(spec.Image), "socket-path=" + esc(spec.Socket),
		fmt.Sprintf("num-queues=%d", spec.NumQueues)}
	if spec.ReadOnly {
		parts = append(parts, "read-only=on")
	}
	if spec.Serial != "" {
		parts = append(parts, "serial="+esc(spec.Serial))
	}
	if spec.Durability != pmem.DurabilityAuto {
		parts = append(parts, "durability="+spec.Durability.String())
	}
	return strings.Join(parts, ",")
}

// diskList is serve's repeatable --disk flag.
type diskList []blkserve.Spec

func (l *diskList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(*l))
	for i, d := range *l {
		s[i] = formatDiskSpec(d)
	}
	return strings.Join(s, " ")
}

func (l *diskList) Set(v string) error {
	spec, err := parseDiskSpec(v)
	if err != nil {
		return err
	}
	*l = append(*l, spec)
	return nil
}

// diskSet is the control socket's view of serve's blkserve.Set: it
// parses disk-add's spec as --disk does and describes the disks.
type diskSet struct{ set *blkserve.Set }

func (d diskSet) Add(spec string) (control.DiskInfo, error) {
	s, err := parseDiskSpec(spec)
	if err != nil {
		return control.DiskInfo{}, err
	}
	in, err := d.set.Add(s)
	if err != nil {
		return control.DiskInfo{}, err
	}
	return diskInfo(in), nil
}

func (d diskSet) Remove(ctx context.Context, name string, mode control.RemoveMode) error {
	m := blkserve.RemoveIfDetached
	switch mode {
	case control.RemoveForce:
		m = blkserve.RemoveForce
	case control.RemoveDrain:
		m = blkserve.RemoveDrain
	}
	return d.set.Remove(ctx, name, m)
}

func (d diskSet) List() []control.Disk {
	list := d.set.List()
	out := make([]control.Disk, len(list))
	for i, in := range list {
		out[i] = control.Disk{Info: diskInfo(in), Target: in.Server}
	}
	return out
}

func diskInfo(in blkserve.DiskInfo) control.DiskInfo {
	ci := control.DiskInfo{Name: in.Name, Image: in.Image, Socket: in.Socket, NumQueues: int(in.NumQueues), ReadOnly: in.ReadOnly,
		Serial: in.Serial, Durability: in.Resolved.String(), Kind: in.Kind, Sectors: in.Sectors, SectorSize: in.SectorSize,
		Attached: in.Server.Stats().Connected}
	if in.Err != nil {
		ci.Error = in.Err.Error()
	}
	return ci
}

// newDiskSet is the Set serve --disk serves: images opened as serve opens
// --blk-file, sockets created with --socket-mode and --socket-group.
func newDiskSet(a *serveArgs, set serveSettings) *blkserve.Set {
	return blkserve.NewSet(blkserve.SetConfig{
		Open: func(s blkserve.Spec) (*pmem.Medium, *btt.Device, error) {
			return openImage(s.Image, s.ReadOnly, s.Durability)
		},
		Listen: func(path string) (net.Listener, error) {
			return vhostuser.ListenModeGroup(path, set.socketMode, set.socketGID)
		},
		DefaultSerial: defaultSerial,
		Server:        serverOptions(a, set),
		Grace:         shutdownGrace,
	})
}

// runServeDisks is serve with --disk: every disk its own socket and
// server, more added and removed over the control socket, all shut down
// cleanly on SIGINT/SIGTERM.
func runServeDisks(ctx context.Context, env *environment, a *serveArgs, set serveSettings) (err error) {
	disks := newDiskSet(a, set)
	defer func() {
		if cerr := disks.Close(); err == nil {
			err = cerr
		}
	}()
	var text strings.Builder
	var added []blkserve.DiskInfo
	for _, spec := range a.disks {
		in, err := disks.Add(spec)
		if err != nil {
			return err
		}
		added = append(added, in)
	}
	ops, err := listenOps(set.controlPath, false, a.metrics)
	if err != nil {
		return err
	}
	defer ops.close()
	ops.serveDisks(diskSet{disks}, set.log)
	printDisksOptions(&text, set.guestMemory, added)
	if ops.controlPath != "" {
		fmt.Fprintf(&text, "# control socket %s: nvblk status|disk list|disk add|disk remove --control-socket %s\n", ops.controlPath, ops.controlPath)
	}
	io.WriteString(env.stdout, text.String())
	<-ctx.Done()
	set.log.Info("signal received: stopped serving")
	// The control socket closes first, waiting for the requests it is
	// answering: no disk is added while the others are shut down.
	ops.close()
	return nil
}

// printDisksOptions prints, for the disks serve started with, the QEMU
// options that attach them: the shared memory once, then a chardev and a
// device per disk, the chardev named after the disk.
func printDisksOptions(w io.Writer, guestMemory string, disks []blkserve.DiskInfo) {
	fmt.Fprintf(w, "# attach the disks to a guest; size= and -m are the guest's RAM, %s (serve --guest-memory), and must stay equal:\n", guestMemory)
	fmt.Fprintf(w, "  -object memory-backend-memfd,id=mem,size=%s,share=on -machine memory-backend=mem -m %s\n", guestMemory, guestMemory)
	for _, d := range disks {
		fmt.Fprintf(w, "# disk %s (%s):\n  -chardev socket,id=%s,path=%s,reconnect=1 -device vhost-user-blk-pci,chardev=%s,num-queues=%d\n",
			d.Name, d.Image, d.Name, d.Socket, d.Name, d.NumQueues)
	}
}

type diskArgs struct {
	control string
	force   bool
	drain   bool
	timeout time.Duration
	json    bool
}

// diskFlags are the flags of `disk SUB` ("" or "disk": all of them, for
// help).
func diskFlags(name, sub string) (*flag.FlagSet, *diskArgs) {
	a := &diskArgs{}
	fs := newFlagSet(name)
	fs.StringVar(&a.control, "control-socket", "", "the --control-socket of the nvblk serve --disk to ask (required)")
	if sub == "" || sub == "remove" {
		fs.BoolVar(&a.force, "force", false, "remove: drop the guest attached to the disk (it sees its socket close) and remove the disk")
		fs.BoolVar(&a.drain, "drain", false, "remove: wait for the guest attached to the disk to leave (up to --timeout), then remove it")
		fs.DurationVar(&a.timeout, "timeout", control.DefaultDrainTimeout, fmt.Sprintf("remove --drain: how long to wait, at most %v", control.MaxDrainTimeout))
	}
	if sub == "" || sub == "list" {
		fs.BoolVar(&a.json, "json", false, "list: print JSON")
	}
	return fs, a
}

func runDisk(env *environment, args []string) error {
	if len(args) == 0 {
		return usagef("missing add, remove or list")
	}
	sub := args[0]
	switch sub {
	case "add", "remove", "list":
	case "-h", "--help", "-help":
		return errHelp
	default:
		return usagef("unknown disk command %q: want add, remove or list", sub)
	}
	fs, a := diskFlags("disk "+sub, sub)
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if a.control == "" {
		return usagef("disk %s: missing --control-socket PATH (the one nvblk serve --disk was started with)", sub)
	}
	switch sub {
	case "add":
		return diskAdd(env, a, pos)
	case "remove":
		return diskRemove(env, a, pos, fs)
	}
	if len(pos) > 0 {
		return usagef("disk list: unexpected arguments %q", pos)
	}
	return diskListCmd(env, a)
}

func diskAdd(env *environment, a *diskArgs, pos []string) error {
	if len(pos) != 1 {
		return usagef("disk add: want one spec, name=NAME,blk-file=FILE,socket-path=PATH[,...]; got %d arguments", len(pos))
	}
	spec, err := parseDiskSpec(pos[0])
	if err != nil {
		return err
	}
	// serve may run in another directory: paths are this command's.
	spec.Image, spec.Socket = absPath(spec.Image), absPath(spec.Socket)
	r, err := control.Do(a.control, control.Request{Cmd: "disk-add", Spec: formatDiskSpec(spec)}, controlTimeout)
	if err != nil {
		return err
	}
	if d := r.Disk; d != nil {
		fmt.Fprintf(env.stdout, "added disk %s: %s on %s, %d queues; attach with:\n  -chardev socket,id=%s,path=%s,reconnect=1 -device vhost-user-blk-pci,chardev=%s,num-queues=%d\n",
			d.Name, d.Image, d.Socket, d.NumQueues, d.Name, d.Socket, d.Name, d.NumQueues)
	}
	return nil
}

func diskRemove(env *environment, a *diskArgs, pos []string, fs *flag.FlagSet) error {
	if len(pos) != 1 {
		return usagef("disk remove: want one disk NAME; got %d arguments", len(pos))
	}
	timeoutSet := false
	fs.Visit(func(f *flag.Flag) { timeoutSet = timeoutSet || f.Name == "timeout" })
	req := control.Request{Cmd: "disk-remove", Disk: pos[0]}
	wait := controlTimeout
	switch {
	case a.force && a.drain:
		return usagef("disk remove: --force and --drain are mutually exclusive")
	case timeoutSet && !a.drain:
		return usagef("disk remove: --timeout is for --drain")
	case a.drain && (a.timeout <= 0 || a.timeout > control.MaxDrainTimeout):
		return usagef("disk remove: --timeout %v: want more than 0, at most %v", a.timeout, control.MaxDrainTimeout)
	case a.force:
		req.Mode = control.RemoveForce
	case a.drain:
		req.Mode, req.Timeout = control.RemoveDrain, a.timeout.String()
		wait += a.timeout
	}
	if _, err := control.Do(a.control, req, wait); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "removed disk %s: image flushed and closed, socket removed\n", pos[0])
	return nil
}

func diskListCmd(env *environment, a *diskArgs) error {
	r, err := control.Do(a.control, control.Request{Cmd: "disk-list"}, controlTimeout)
	if err != nil {
		return err
	}
	disks := r.Disks
	if disks == nil {
		disks = []control.DiskInfo{}
	}
	if a.json {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(disks)
	}
	fmt.Fprintf(env.stdout, "%-12s %-8s %6s %12s %-10s %-9s %s  %s\n", "name", "attached", "queues", "sectors", "durability", "read-only", "image", "socket")
	for _, d := range disks {
		att := yesNo(d.Attached)
		if d.Error != "" {
			att = "stopped"
		}
		fmt.Fprintf(env.stdout, "%-12s %-8s %6d %12d %-10s %-9s %s  %s\n", d.Name, att, d.NumQueues, d.Sectors, d.Durability,
			yesNo(d.ReadOnly), d.Image, d.Socket)
	}
	return nil
}
