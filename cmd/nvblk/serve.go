package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/internal/diskmove"
	"github.com/nvblk/nvblk/internal/systemd"
	"github.com/nvblk/nvblk/nbd"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser"
)

func init() {
	register(&command{name: "serve", summary: "serve the BTT on FILE to QEMU as a vhost-user-blk device (also: nvblk --socket-path ...)",
		usage: "--socket-path PATH | --fd N | (systemd socket)  --blk-file FILE [--read-only] [--num-queues N] [--poll-us auto|N] [--incoming NBD-URI] " +
			"| --disk name=NAME,blk-file=FILE,socket-path=PATH[,num-queues=N][,read-only=on][,serial=S][,durability=MODE] ... " +
			"[--socket-mode 0600] [--socket-group GROUP] [--durability MODE] [--serial S] [--migration] [--control-socket PATH|none] [--metrics-addr HOST:PORT] [--guest-memory 1G] " +
			"[--log-level LEVEL] [--log-format text|json] | --print-capabilities",
		run: runServe})
	flagSets["serve"] = func() *flag.FlagSet { fs, _ := serveFlags(); return fs }
}

// maxServeQueues bounds --num-queues before the image is open: a queue
// per BTT lane, and no BTT has more lanes than a fresh one. blkserve.New
// then refuses more queues than the image's own lanes (fewer when it was
// formatted with --free-blocks under 256).
const maxServeQueues = blkserve.MaxQueues

// defaultServeQueues is what serve offers without --num-queues. QEMU
// without num-queues asks for one queue per vCPU and fails to start the
// device when the back-end offers fewer, so the default covers a guest as
// wide as the host (its vCPUs are rarely more than the host's CPUs), and at
// least 4, for small hosts and libvirt's usual queues='2'; the one-disk
// serve cuts it to the image's lanes. Offering more than the guest uses
// costs nothing: a queue the front-end never starts has no worker
// goroutine and holds no BTT lane (docs/PERFORMANCE.md, What a queue
// costs).
var defaultServeQueues = uint(max(4, min(maxServeQueues, runtime.NumCPU())))

// shutdownGrace bounds how long in-flight requests may take to finish
// after SIGINT/SIGTERM (the management layer sends SIGKILL a few seconds
// after SIGTERM).
const shutdownGrace = 5 * time.Second

type serveArgs struct {
	socketPath string
	socketMode string
	socketGrp  string
	fd         int
	blkFile    string
	readOnly   bool
	numQueues  uint
	poll       pollFlag
	migration  bool
	incoming   string // NBD URI the disk arrives on (serve --incoming)
	durability string
	serial     string
	logLevel   string
	logFormat  string
	printCaps  bool
	control    string
	metrics    string
	guestMem   string
	disks      diskList        // --disk, repeated: many disks in one serve
	given      map[string]bool // the flags on the command line
}

func serveFlags() (*flag.FlagSet, *serveArgs) {
	a := &serveArgs{}
	fs := newFlagSet("serve")
	fs.StringVar(&a.socketPath, "socket-path", "", "create and listen on this vhost-user unix socket (incompatible with --fd)")
	fs.StringVar(&a.socketMode, "socket-mode", "0600", "permissions of the socket --socket-path creates, in octal (e.g. 0660 to let a group such as libvirt-qemu connect); "+
		"the control socket stays 0600")
	fs.StringVar(&a.socketGrp, "socket-group", "", "give the socket --socket-path creates this group, a name or a numeric gid (e.g. kvm or libvirt-qemu, "+
		"with --socket-mode 0660); by default the creator's")
	fs.IntVar(&a.fd, "fd", -1, "serve on this inherited, already-listening unix socket fd (incompatible with --socket-path)")
	fs.StringVar(&a.blkFile, "blk-file", "", "the BTT image (an emulated-NVDIMM file, a pmem block device or devdax) to serve (required)")
	fs.BoolVar(&a.readOnly, "read-only", false, "offer a read-only disk (VIRTIO_BLK_F_RO); the image is opened read-only")
	fs.UintVar(&a.numQueues, "num-queues", defaultServeQueues, fmt.Sprintf("request queues to offer, 1..%d and at most the image's BTT lanes "+
		"(%d on a fresh image, its free blocks per arena if fewer); by default one per host CPU, at least 4, at most the lanes "+
		"(QEMU without num-queues asks for one per vCPU)", maxServeQueues, maxServeQueues))
	fs.Var(&a.poll, "poll-us", "how long a queue busy-polls its ring for the next request before sleeping on its kick: "+
		"auto (the default) adapts each queue's window to its traffic (up to 50 µs while requests keep coming within it, "+
		"none once they stop, so an idle queue costs no CPU); N µs polls that long after every request (a core "+
		"spinning while the guest is busy); 0 never polls (lowest CPU, a wake-up more per request)")
	fs.BoolVar(&a.migration, "migration", false, "offer the dirty logging (VHOST_F_LOG_ALL) QEMU needs to live-migrate the guest, to another QEMU on this host or, with nvblk move, to another host (see README, Live migration)")
	fs.StringVar(&a.incoming, "incoming", "", "the disk arrives from another host's nvblk move: listen for it on this NBD URI "+
		"(nbd://HOST:PORT, nbd+unix:///?socket=PATH) and hold the guest's requests until it has arrived. Format the image with the source's "+
		"size and sector size")
	fs.StringVar(&a.durability, "durability", "auto", durabilityHelp)
	fs.StringVar(&a.serial, "serial", "", "GET_ID serial, at most 20 bytes (default: nvblk- and the BTT uuid's first hex digits)")
	fs.StringVar(&a.logLevel, "log-level", "info", "log level: panic, fatal, error, warn, info, debug or trace")
	fs.StringVar(&a.logFormat, "log-format", "text", "log format on stderr: text or json")
	fs.BoolVar(&a.printCaps, "print-capabilities", false, "print the vhost-user backend capabilities as JSON and exit")
	fs.StringVar(&a.control, "control-socket", "", "answer nvblk status / nvblk detach on this unix socket (JSON lines, mode 0600); "+
		"by default --socket-path + \""+controlSuffix+"\" (with --fd: none unless given); "+controlNone+": open none")
	fs.StringVar(&a.metrics, "metrics-addr", "", "serve Prometheus metrics at http://HOST:PORT/metrics")
	fs.Var(&a.disks, "disk", "serve this disk, name=NAME,blk-file=FILE,socket-path=PATH[,num-queues=N][,read-only=on][,serial=S][,durability=MODE] "+
		"(a comma in a value written ,,); repeat for more disks, and add or remove disks at run time with nvblk disk over --control-socket. "+
		"Instead of --socket-path/--fd, --blk-file, --read-only, --num-queues, --serial and --durability")
	fs.StringVar(&a.guestMem, "guest-memory", "1G", "the guest's RAM in the QEMU options serve prints (size= and -m), a multiple of 1M such as 4G or 1536M; "+
		"nothing else depends on it")
	return fs, a
}

// backendCapabilities is the vhost-user.json VHostUserBackendCapabilities
// answer for type "block": the options of the "Backend program
// conventions" we implement.
type backendCapabilities struct {
	Type     string   `json:"type"`
	Features []string `json:"features"`
}

var blockCapabilities = backendCapabilities{Type: "block", Features: []string{"read-only", "blk-file"}}

// wantsCapabilities reports whether --print-capabilities is among args: the
// conventions say every other option is then ignored, valid or not.
func wantsCapabilities(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		switch a {
		case "--print-capabilities", "-print-capabilities", "--print-capabilities=true", "-print-capabilities=true":
			return true
		}
	}
	return false
}

// serveContext ends on SIGINT or SIGTERM; tests replace it.
var serveContext = signalContext

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func runServe(env *environment, args []string) error {
	if wantsCapabilities(args) {
		return printCapabilities(env.stdout)
	}
	a, controlSet, err := parseServeArgs(args)
	if err != nil {
		return err
	}
	// Catch SIGINT/SIGTERM from here on: one that lands while the image is
	// opened or the sockets set up then ends serve cleanly (image flushed
	// and closed, sockets removed) as soon as it would start serving,
	// instead of killing it by the default action.
	ctx, stop := serveContext()
	defer stop()
	if len(a.disks) > 0 {
		set, err := a.checkDisks(env.stderr)
		if err != nil {
			return err
		}
		return runServeDisks(ctx, env, a, set)
	}
	set, err := a.check(env.stderr, controlSet)
	if err != nil {
		return err
	}

	m, d, err := openImage(a.blkFile, a.readOnly, set.durability)
	if err != nil {
		return err
	}
	defer m.Close()
	defer d.Close()
	serial := a.serial
	if serial == "" {
		serial = defaultSerial(d.UUID())
	}
	if !a.given["num-queues"] {
		// The default is the host's width, not the operator's choice: an
		// image with fewer lanes gets a queue per lane.
		a.numQueues = min(a.numQueues, uint(blkserve.Lanes(d)))
	}
	s, err := blkserve.New(d, m.Durability(), blkserve.Config{NumQueues: uint16(a.numQueues), ReadOnly: a.readOnly, Serial: serial,
		Server: serverOptions(a, set), Arriving: a.incoming != ""})
	if errors.Is(err, blkserve.ErrTooManyQueues) {
		return fmt.Errorf("--num-queues: %s: %w", a.blkFile, err)
	}
	if err != nil {
		return err
	}

	ops, err := listenOps(set.controlPath, set.controlByDefault, a.metrics)
	if err != nil {
		return err
	}
	defer ops.close()
	l, socket, err := a.listen(set.socketMode, set.socketGID)
	if err != nil {
		return err
	}
	if a.incoming != "" {
		if err := serveIncoming(ctx, s, a.incoming, set.log); err != nil {
			return err
		}
	}
	qemu := logStartup(set.log, a, set.guestMemory, socket, m, d, s, serial)
	ops.serve(&growableServer{Server: s.Server, grow: func(size int64) (blkserve.Grown, error) { return s.Grow(m, size) },
		move: s.Move, log: set.log}, set.log)
	// Printed last and in one write: once "# attach" is out, every endpoint
	// listens and the whole text is there.
	var text strings.Builder
	printQEMUOptions(&text, a.blkFile, set.guestMemory, qemu)
	printControlHint(&text, a.socketPath, ops.controlPath)
	io.WriteString(env.stdout, text.String())

	err = s.Server.ServeContext(ctx, l, shutdownGrace)
	if ctx.Err() != nil {
		set.log.Info("signal received: stopped serving")
	}
	return closeImage(set.log, a.blkFile, m, d, err)
}

func printCapabilities(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(blockCapabilities)
}

// parseServeArgs parses serve's flags; controlSet tells whether
// --control-socket was given, as its default depends on that.
func parseServeArgs(args []string) (a *serveArgs, controlSet bool, err error) {
	fs, a := serveFlags()
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, false, err
	}
	if len(pos) > 0 {
		return nil, false, usagef("unexpected arguments %q (the image is given with --blk-file)", pos)
	}
	a.given = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { a.given[f.Name] = true })
	return a, a.given["control-socket"], nil
}

// serverOptions are the vhost server's settings every disk shares.
func serverOptions(a *serveArgs, set serveSettings) vhost.Options {
	return vhost.Options{PollDuration: a.poll.duration(), Logger: set.log, Migration: a.migration}
}

// pollFlag is --poll-us: auto (the default) or a fixed window in
// microseconds, 0 for none.
type pollFlag struct {
	us    uint
	fixed bool // a number was given
}

// maxPollUS bounds --poll-us: a window past a second is a mistake.
const maxPollUS = 1_000_000

func (f *pollFlag) String() string {
	if f == nil || !f.fixed {
		return "auto"
	}
	return strconv.FormatUint(uint64(f.us), 10)
}

func (f *pollFlag) Set(s string) error {
	if s == "auto" {
		*f = pollFlag{}
		return nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > maxPollUS {
		return fmt.Errorf("want auto, or microseconds 0..%d (0: never poll)", maxPollUS)
	}
	f.us, f.fixed = uint(n), true
	return nil
}

// duration is the vhost.Options.PollDuration f asks for.
func (f pollFlag) duration() time.Duration {
	switch {
	case !f.fixed:
		return 0 // adaptive
	case f.us == 0:
		return vhost.NeverPoll
	}
	return time.Duration(f.us) * time.Microsecond
}

// perDiskFlags are the serve flags that describe the one disk of a serve
// without --disk; with --disk each disk's spec says them.
var perDiskFlags = []struct{ flag, key string }{
	{"socket-path", "socket-path"}, {"fd", ""}, {"blk-file", "blk-file"}, {"read-only", "read-only"},
	{"num-queues", "num-queues"}, {"serial", "serial"}, {"durability", "durability"},
}

// checkDisks validates serve --disk's flags before anything is opened:
// no flag of the one-disk serve, no two disks with a name, socket or
// image in common, a control socket only where --control-socket says.
func (a *serveArgs) checkDisks(stderr io.Writer) (serveSettings, error) {
	var set serveSettings
	if a.incoming != "" {
		return set, usagef("--incoming: a disk arriving from another host is served on its own, with --blk-file, not with --disk")
	}
	for _, f := range perDiskFlags {
		switch {
		case !a.given[f.flag]:
		case f.key == "":
			return set, usagef("--%s: with --disk each disk has its own socket, given by socket-path= in its spec", f.flag)
		default:
			return set, usagef("--%s: with --disk each disk's spec gives it (%s=)", f.flag, f.key)
		}
	}
	err := a.checkSocketFile(&set)
	if err != nil {
		return set, err
	}
	switch {
	case a.control == controlNone, !a.given["control-socket"]:
		// Without a control socket the disks are the ones given; there is
		// no S.ctl default, as no disk's socket is the process's.
	case a.control == "":
		return set, usagef("--control-socket \"\": want a path, or %s to open no control socket", controlNone)
	default:
		set.controlPath = a.control
	}
	seen := map[string]string{} // name, socket path and image -> the disk that has it
	claim := func(what, key, name string) error {
		if other, ok := seen[what+key]; ok {
			return usagef("--disk %s: %s %s is disk %s's too", name, what, key, other)
		}
		seen[what+key] = name
		return nil
	}
	for _, d := range a.disks {
		if err := claim("name", d.Name, d.Name); err != nil {
			return set, usagef("--disk %s: two disks are named %s", d.Name, d.Name)
		}
		if err := claim("socket", absPath(d.Socket), d.Name); err != nil {
			return set, err
		}
		if err := claim("image", absPath(d.Image), d.Name); err != nil {
			return set, err
		}
		if set.controlPath != "" && samePath(set.controlPath, d.Socket) {
			return set, usagef("--control-socket %q is disk %s's socket-path: the control socket needs a path of its own", a.control, d.Name)
		}
	}
	if set.guestMemory, err = qemuMemorySize(a.guestMem); err != nil {
		return set, err
	}
	if set.log, err = newLogger(stderr, a.logLevel, a.logFormat); err != nil {
		return set, err
	}
	return set, nil
}

// serveSettings are the flags that needed more than parsing, checked.
type serveSettings struct {
	socketMode       os.FileMode
	socketGID        int // -1: the creator's group
	controlPath      string
	controlByDefault bool
	durability       pmem.Durability
	guestMemory      string         // --guest-memory as QEMU writes sizes
	log              *logrus.Logger // writing to serve's stderr
}

// check validates the flags before anything is opened, so a bad command
// line touches no image and no socket. With neither --socket-path nor
// --fd it takes the socket systemd passed, setting a.fd.
func (a *serveArgs) check(stderr io.Writer, controlSet bool) (serveSettings, error) {
	var set serveSettings
	if a.incoming != "" && a.readOnly {
		return set, usagef("--incoming and --read-only: an arriving disk is written by its source")
	}
	err := a.checkSocketFile(&set)
	if err != nil {
		return set, err
	}
	systemdSocket := false
	if a.socketPath == "" && a.fd < 0 {
		if err := a.inheritSystemdSocket(); err != nil {
			return set, err
		}
		systemdSocket = a.fd >= 0
	}
	switch {
	case a.socketPath != "" && a.fd >= 0:
		return set, usagef("--socket-path and --fd are mutually exclusive")
	case a.socketPath == "" && a.fd < 0:
		return set, usagef("missing --socket-path or --fd (or a socket passed by systemd in LISTEN_FDS)")
	case a.fd >= 0 && a.fd <= 2:
		return set, usagef("--fd %d: fds 0, 1 and 2 are stdin, stdout and stderr", a.fd)
	case a.socketGrp != "" && systemdSocket:
		return set, usagef("--socket-group: the socket systemd passed is made by systemd: give its group with SocketGroup= in the .socket unit")
	case a.socketGrp != "" && a.fd >= 0:
		return set, usagef("--socket-group: --fd %d is an existing socket; only the one --socket-path creates is given a group", a.fd)
	case a.blkFile == "":
		return set, usagef("missing --blk-file")
	case a.numQueues < 1 || a.numQueues > maxServeQueues:
		return set, usagef("--num-queues %d: want 1..%d", a.numQueues, maxServeQueues)
	case len(a.serial) > 20:
		return set, usagef("--serial %q: at most 20 bytes", a.serial)
	}
	if set.controlPath, set.controlByDefault, err = a.controlSocket(controlSet); err != nil {
		return set, err
	}
	if set.durability, err = parseDurability(a.durability); err != nil {
		return set, err
	}
	if set.guestMemory, err = qemuMemorySize(a.guestMem); err != nil {
		return set, err
	}
	if set.log, err = newLogger(stderr, a.logLevel, a.logFormat); err != nil {
		return set, err
	}
	return set, nil
}

// checkSocketFile resolves the flags every serve applies to the sockets it
// creates, --socket-mode and --socket-group, into set.
func (a *serveArgs) checkSocketFile(set *serveSettings) error {
	mode, err := strconv.ParseUint(a.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return usagef("--socket-mode %q: want octal permissions such as 0600 or 0660", a.socketMode)
	}
	set.socketMode = os.FileMode(mode)
	set.socketGID, err = lookupGroup(a.socketGrp)
	return err
}

// lookupGroup resolves --socket-group: "" is -1 (the creator's group), a
// number is that gid whether or not /etc/group names it, anything else a
// group name that must exist.
func lookupGroup(group string) (int, error) {
	if group == "" {
		return -1, nil
	}
	if gid, err := strconv.ParseUint(group, 10, 31); err == nil {
		return int(gid), nil
	}
	g, err := user.LookupGroup(group)
	var unknown user.UnknownGroupError
	switch {
	case errors.As(err, &unknown):
		return -1, usagef("--socket-group %q: no such group", group)
	case err != nil:
		return -1, fmt.Errorf("--socket-group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, usagef("--socket-group %q: gid %q is not a number", group, g.Gid)
	}
	return gid, nil
}

// inheritSystemdSocket takes the one listening socket of socket
// activation, if systemd passed any.
func (a *serveArgs) inheritSystemdSocket() error {
	fds, err := systemd.ListenFDs()
	switch {
	case err != nil:
		return fmt.Errorf("systemd socket activation: %w", err)
	case len(fds) > 1:
		return fmt.Errorf("systemd socket activation: %d sockets passed; want one", len(fds))
	case len(fds) == 1:
		a.fd = fds[0]
	}
	return nil
}

// listen opens the vhost-user socket (or adopts the inherited one) and
// returns it with its absolute path, which QEMU may need from another
// directory.
func (a *serveArgs) listen(mode os.FileMode, gid int) (*net.UnixListener, string, error) {
	var l *net.UnixListener
	var err error
	if a.fd >= 0 {
		l, err = vhost.FileListener(a.fd)
	} else {
		l, err = vhostuser.ListenModeGroup(a.socketPath, mode, gid)
	}
	if err != nil {
		return nil, "", err
	}
	socket := l.Addr().String() // the --fd socket's own path
	if a.socketPath != "" {
		socket = a.socketPath
	}
	if abs, err := filepath.Abs(socket); err == nil && socket != "" {
		socket = abs
	}
	return l, socket, nil
}

// logStartup logs what is served and how to attach it, and returns the
// QEMU options it logged.
func logStartup(lg logrus.FieldLogger, a *serveArgs, guestMemory, socket string, m *pmem.Medium, d *btt.Device, s *blkserve.Served, serial string) []string {
	capacity := int64(d.NumSectors()) * int64(d.SectorSize())
	lg.WithFields(logrus.Fields{
		"socket": socket, "image": a.blkFile, "btt": d.Version().String(), "uuid": btt.FormatUUID(d.UUID()),
		"sector_size": d.SectorSize(), "sectors": d.NumSectors(), "capacity": humanBytes(capacity),
		"write_cache": !s.WriteThrough, "read_only": s.Device.ReadOnly(), "num_queues": a.numQueues,
		"poll_us": a.poll.String(), "serial": serial,
	}).WithFields(mediumFields(m)).Info("serving vhost-user-blk")
	qemu := qemuOptions(socket, a.numQueues, guestMemory)
	lg.WithField("qemu", strings.Join(qemu, " ")).Info("attach with these QEMU options")
	return qemu
}

// mediumFields name what a guest's writes are made durable on, so that
// an operator (and the in-guest pmem tests) can tell from the start-up
// line alone whether the medium is what it should be: the kind of file,
// whether the kernel granted MAP_SYNC (fsdax), the durability mode auto
// resolved to, and the cache-line write-back Persist runs ("none" in the
// page-cache modes, where msync does the work).
func mediumFields(m *pmem.Medium) logrus.Fields {
	wb := m.WriteBackInstruction()
	if wb == "" {
		wb = "none"
	}
	return logrus.Fields{"kind": m.Kind().String(), "map_sync": m.MapSync(), "durability": m.Durability().String(), "write_back": wb}
}

// closeImage closes the BTT (flushing it) and its medium after serving
// ended with serveErr, and returns the first error of the three.
func closeImage(lg logrus.FieldLogger, path string, m *pmem.Medium, d *btt.Device, serveErr error) error {
	err := serveErr
	if cerr := d.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing the BTT: %w", cerr)
	}
	if cerr := m.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing %s: %w", path, cerr)
	}
	if err == nil {
		lg.Info("image flushed and closed")
	}
	return err
}

// defaultSerial is "nvblk-" and the first 14 hex digits of the BTT uuid:
// stable across restarts, 20 bytes, what /dev/disk/by-id shows.
func defaultSerial(uuid [16]byte) string {
	return "nvblk-" + strings.ReplaceAll(btt.FormatUUID(uuid), "-", "")[:14]
}

func newLogger(w io.Writer, level, format string) (*logrus.Logger, error) {
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, usagef("--log-level %q: want panic, fatal, error, warn, info, debug or trace", level)
	}
	lg := logrus.New()
	lg.SetOutput(w)
	lg.SetLevel(lv)
	switch format {
	case "text":
		lg.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	case "json":
		lg.SetFormatter(&logrus.JSONFormatter{})
	default:
		return nil, usagef("--log-format %q: want text or json", format)
	}
	return lg, nil
}

// qemuOptions are the QEMU arguments that attach a guest with mem of RAM
// (a QEMU size, qemuMemorySize) to socket. The guest's RAM must be shared
// (memfd, share=on) for a vhost-user back-end to map it, and the backend's
// size= must match -m, so both are written from mem. reconnect=1
// makes QEMU redial a restarted backend, which resubmits in-flight
// requests from the inflight region instead of the guest seeing errors.
func qemuOptions(socket string, queues uint, mem string) []string {
	return []string{
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-machine", "memory-backend=mem", "-m", mem,
		"-chardev", "socket,id=nvblk0,path=" + socket + ",reconnect=1",
		"-device", fmt.Sprintf("vhost-user-blk-pci,chardev=nvblk0,num-queues=%d", queues),
	}
}

// qemuMemorySize checks --guest-memory and writes it as QEMU does, in
// whole G or M: a bare number would be bytes to size= but MiB to -m.
func qemuMemorySize(s string) (string, error) {
	n, err := parseSize(s)
	if err != nil || n%(1<<20) != 0 {
		return "", usagef("--guest-memory %q: want a multiple of 1M such as 1G, 4G or 1536M", s)
	}
	if n%(1<<30) == 0 {
		return strconv.FormatInt(n>>30, 10) + "G", nil
	}
	return strconv.FormatInt(n>>20, 10) + "M", nil
}

// printControlHint tells the operator where the control socket is (ctl,
// absolute; "" when there is none) and how to reach it: by --socket-path
// when it is the default S.ctl, else by its own path.
func printControlHint(w io.Writer, socketPath, ctl string) {
	switch {
	case ctl == "":
	case socketPath != "" && ctl == absPath(defaultControlSocket(socketPath)):
		fmt.Fprintf(w, "# control socket %s: nvblk status|detach --socket-path %s\n", ctl, absPath(socketPath))
	default:
		fmt.Fprintf(w, "# control socket %s: nvblk status|detach --control-socket %s\n", ctl, ctl)
	}
}

// printQEMUOptions prints the options as a block ready to paste into a
// shell command line.
func printQEMUOptions(w io.Writer, image, guestMemory string, opts []string) {
	fmt.Fprintf(w, "# attach %s to a guest; size= and -m are the guest's RAM, %s (serve --guest-memory), and must stay equal:\n", image, guestMemory)
	for i := 0; i < len(opts); i += 2 {
		sep := " \\"
		if i+2 >= len(opts) {
			sep = ""
		}
		fmt.Fprintf(w, "  %s %s%s\n", opts[i], opts[i+1], sep)
	}
}

// growableServer is the control socket's target for a one-disk serve (a
// pointer: the control server keys its samples by target): the
// server, and the grow command over its image.
type growableServer struct {
	*vhost.Server
	grow func(size int64) (blkserve.Grown, error)
	move func(ctx context.Context, to nbd.Address, o diskmove.Options) (diskmove.Stats, error)
	log  logrus.FieldLogger
}

// Move is the control socket's move command.
func (g *growableServer) Move(ctx context.Context, to string) (json.RawMessage, error) {
	addr, err := nbd.ParseURI(to)
	if err != nil {
		return nil, err
	}
	log := g.log.WithField("to", addr.String())
	log.Info("moving the disk: copying it while the guest runs, switching over with its migration")
	converged := false
	st, err := g.move(ctx, addr, diskmove.Options{Progress: func(r diskmove.Round) {
		switch {
		case r.Cutover:
			log.WithField("sectors", r.Sectors).Info("move: switch-over; the disk here is fenced, the last sectors sent")
		case r.N == 0:
			log.WithFields(logrus.Fields{"sectors": r.Sectors, "took": r.Took.Round(time.Millisecond)}).Info("move: the whole disk copied")
		case r.Converged && !converged:
			converged = true
			log.WithField("round", r.N).Info("move: converged; following the guest's writes until the migration's switch-over")
		}
	}})
	if err != nil {
		log.WithError(err).Error("move failed; the disk stays here")
	} else {
		log.WithFields(logrus.Fields{"rounds": st.Rounds, "sectors_sent": st.SectorsSent, "cutover": st.CutoverTook.Round(time.Microsecond)}).
			Info("moved: the destination has the disk; writes here are refused from now on")
	}
	raw, merr := json.Marshal(st)
	if merr != nil {
		return nil, errors.Join(err, merr)
	}
	return raw, err
}

func (g *growableServer) Grow(size int64) (control.Grown, error) {
	r, err := g.grow(size)
	return control.Grown{SectorsBefore: r.SectorsBefore, SectorsAfter: r.SectorsAfter, ArenasAdded: r.Arenas, FrontEndsTold: r.Told}, err
}
