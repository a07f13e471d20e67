package blkserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
)

// DefaultMaxDisks bounds a Set when SetConfig.MaxDisks is zero: each disk
// holds a mapping, a listener and, with a guest, a session's descriptors,
// so the bound keeps a runaway script from taking the process's fds.
const DefaultMaxDisks = 256

// Spec is what the operator chose for one disk of a Set: `nvblk serve
// --disk` and `nvblk disk add` parse it, the Set checks it against the
// disks it has.
type Spec struct {
	Name       string
	Image      string // the BTT image; made absolute by Add
	Socket     string // the vhost-user socket Add creates; made absolute by Add
	NumQueues  uint16
	ReadOnly   bool
	Serial     string // "" asks SetConfig.DefaultSerial
	Durability pmem.Durability
}

// SetConfig is what every disk of a Set shares.
type SetConfig struct {
	MaxDisks int // 0: DefaultMaxDisks
	// Open opens a disk's medium and BTT; the Set owns both from then on
	// and closes them when the disk is removed.
	Open func(s Spec) (*pmem.Medium, *btt.Device, error)
	// Listen creates a disk's vhost-user socket (the socket mode and
	// group are the process's); closing the listener removes the file.
	Listen func(path string) (net.Listener, error)
	// DefaultSerial names a disk whose Spec has no serial.
	DefaultSerial func(uuid [16]byte) string
	// Server holds the protocol settings of every disk's server; its
	// Logger is given a disk field per disk.
	Server vhost.Options
	// Grace bounds each disk's shutdown: in-flight requests, then flush.
	Grace time.Duration
}

// RemoveMode says what Remove does with a disk a front-end is attached to.
type RemoveMode int

const (
	// RemoveIfDetached refuses a disk with a front-end attached.
	RemoveIfDetached RemoveMode = iota
	// RemoveForce drops the front-end (it sees the socket close) and
	// removes the disk.
	RemoveForce
	// RemoveDrain waits, until its context ends, for the front-end to
	// leave, then removes the disk.
	RemoveDrain
)

// ErrAttached is returned by Remove for a disk whose front-end is attached.
var ErrAttached = errors.New("a front-end is attached")

// DiskInfo is one disk as a Set lists it.
type DiskInfo struct {
	Spec
	Sectors    uint64
	SectorSize uint32
	Kind       string          // the medium: file, block device or devdax
	Resolved   pmem.Durability // the durability auto resolved to: flush, sync or dax
	Server     *vhost.Server   // for status, stats, detach and metrics
	// Err is why the disk's server stopped on its own (an accept error);
	// nil while it serves.
	Err error
}

// Set serves named disks, each its own image, socket, server and
// goroutine, added and removed at run time. Every descriptor of a disk
// (medium, listener, sessions) is owned by its entry and closed by Remove
// or Close.
type Set struct {
	c   SetConfig
	log logrus.FieldLogger

	mu sync.Mutex // guards the fields below
	// disks are the disks serving or being set up; an entry is reserved
	// (ready false) while Add opens it, so that a name, socket or image
	// is claimed once even by concurrent Adds.
	disks  map[string]*setDisk
	closed bool
}

type setDisk struct {
	spec    Spec
	imageID fileID // zero when the image could not be stat'ed
	// Set by Add once the disk serves; read under Set.mu.
	ready    bool
	removing bool
	m        *pmem.Medium
	d        *btt.Device
	served   *Served
	cancel   context.CancelFunc
	done     chan struct{} // closed when the server goroutine ended
	// Written by the server goroutine before done closes: what
	// ServeContext returned, and whether it stopped on its own (an accept
	// error) rather than by stop.
	serveErr    error
	selfStopped bool
}

// fileID is a file's device and inode: the same image reached by two
// paths (a symlink, a hard link, /dev/pmem0 and its alias) is one image.
type fileID struct{ dev, ino uint64 }

func statID(path string) fileID {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}
}

// NewSet returns an empty Set.
func NewSet(c SetConfig) *Set {
	if c.MaxDisks <= 0 {
		c.MaxDisks = DefaultMaxDisks
	}
	var lg logrus.FieldLogger = logrus.StandardLogger()
	if c.Server.Logger != nil {
		lg = c.Server.Logger
	}
	return &Set{c: c, log: lg, disks: map[string]*setDisk{}}
}

// Add opens the disk's image, creates its socket and serves it. It
// refuses a name, socket path or image another disk has, a disk over
// MaxDisks, and a Set that is closing; on any error nothing of the disk is
// left open and no socket file is left behind.
func (s *Set) Add(spec Spec) (DiskInfo, error) {
	if spec.Name == "" || spec.Image == "" || spec.Socket == "" {
		return DiskInfo{}, fmt.Errorf("disk %q: a name, an image and a socket path are required", spec.Name)
	}
	var err error
	if spec.Image, err = filepath.Abs(spec.Image); err != nil {
		return DiskInfo{}, fmt.Errorf("disk %s: image: %w", spec.Name, err)
	}
	if spec.Socket, err = filepath.Abs(spec.Socket); err != nil {
		return DiskInfo{}, fmt.Errorf("disk %s: socket: %w", spec.Name, err)
	}
	e := &setDisk{spec: spec, imageID: statID(spec.Image), done: make(chan struct{})}
	if err := s.reserve(e); err != nil {
		return DiskInfo{}, err
	}
	if err := s.start(e); err != nil {
		s.mu.Lock()
		delete(s.disks, spec.Name)
		s.mu.Unlock()
		return DiskInfo{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info(e), nil
}

// reserve claims e's name, socket and image, or says which disk has one.
func (s *Set) reserve(e *setDisk) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := e.spec.Name
	if s.closed {
		return fmt.Errorf("disk %s: serve is shutting down", name)
	}
	if _, ok := s.disks[name]; ok {
		return fmt.Errorf("disk %s: a disk of that name is already served", name)
	}
	if len(s.disks) >= s.c.MaxDisks {
		return fmt.Errorf("disk %s: serve already has %d disks, the most it serves", name, s.c.MaxDisks)
	}
	for _, o := range s.disks {
		switch {
		case o.spec.Socket == e.spec.Socket:
			return fmt.Errorf("disk %s: socket %s is disk %s's", name, e.spec.Socket, o.spec.Name)
		case o.spec.Image == e.spec.Image || (e.imageID != fileID{} && o.imageID == e.imageID):
			return fmt.Errorf("disk %s: image %s is already served as disk %s", name, e.spec.Image, o.spec.Name)
		}
	}
	s.disks[name] = e
	return nil
}

// start opens e's image and socket and starts its server goroutine; on
// error it has closed what it opened.
func (s *Set) start(e *setDisk) error {
	name := e.spec.Name
	lg := s.log.WithField("disk", name)
	m, d, err := s.c.Open(e.spec)
	if err != nil {
		return fmt.Errorf("disk %s: %w", name, err)
	}
	closeImage := func() {
		d.Close()
		m.Close()
	}
	if e.spec.Serial == "" && s.c.DefaultSerial != nil {
		e.spec.Serial = s.c.DefaultSerial(d.UUID())
	}
	opts := s.c.Server
	opts.Logger = lg
	srv, err := New(d, m.Durability(), Config{NumQueues: e.spec.NumQueues, ReadOnly: e.spec.ReadOnly, Serial: e.spec.Serial, Server: opts})
	if err != nil {
		closeImage()
		return fmt.Errorf("disk %s: %w", name, err)
	}
	l, err := s.c.Listen(e.spec.Socket)
	if err != nil {
		closeImage()
		return fmt.Errorf("disk %s: %w", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	e.m, e.d, e.served, e.cancel = m, d, srv, cancel
	e.ready = true
	s.mu.Unlock()
	go func() {
		defer close(e.done)
		e.serveErr = srv.Server.ServeContext(ctx, l, s.c.Grace)
		if e.selfStopped = ctx.Err() == nil; e.selfStopped {
			lg.WithError(e.serveErr).Error("disk stopped serving: remove it and add it again")
		}
	}()
	lg.WithFields(logrus.Fields{"image": e.spec.Image, "socket": e.spec.Socket, "sectors": d.NumSectors(),
		"sector_size": d.SectorSize(), "num_queues": e.spec.NumQueues, "read_only": srv.Device.ReadOnly(),
		"serial": e.spec.Serial, "kind": m.Kind().String(), "durability": m.Durability().String(),
		"write_cache": !srv.WriteThrough}).Info("serving vhost-user-blk")
	return nil
}

// info describes e; s.mu is held.
func (s *Set) info(e *setDisk) DiskInfo {
	in := DiskInfo{Spec: e.spec, Sectors: e.d.NumSectors(), SectorSize: e.d.SectorSize(), Kind: e.m.Kind().String(),
		Resolved: e.m.Durability(), Server: e.served.Server}
	select {
	case <-e.done:
		in.Err = e.serveErr
		if in.Err == nil {
			in.Err = errors.New("stopped")
		}
	default:
	}
	return in
}

// List returns the disks that serve, by name.
func (s *Set) List() []DiskInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]DiskInfo, 0, len(s.disks))
	for _, e := range s.disks {
		if e.ready && !e.removing {
			out = append(out, s.info(e))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Remove stops serving the named disk: its listener closes (the socket
// file goes), its front-end if any is dropped, in-flight requests
// complete, and its BTT is flushed and closed with its medium. mode says
// what to do when a front-end is attached; RemoveDrain waits for it to
// leave until ctx ends.
func (s *Set) Remove(ctx context.Context, name string, mode RemoveMode) error {
	s.mu.Lock()
	e, ok := s.disks[name]
	switch {
	case !ok || !e.ready:
		s.mu.Unlock()
		return fmt.Errorf("disk %s: no such disk", name)
	case e.removing:
		s.mu.Unlock()
		return fmt.Errorf("disk %s: already being removed", name)
	}
	e.removing = true
	s.mu.Unlock()
	if err := s.waitDetached(ctx, e, mode); err != nil {
		s.mu.Lock()
		e.removing = false
		s.mu.Unlock()
		return err
	}
	err := s.stop(e)
	s.mu.Lock()
	delete(s.disks, name)
	s.mu.Unlock()
	return err
}

// drainPoll is how often RemoveDrain looks whether the front-end left.
const drainPoll = 20 * time.Millisecond

func (s *Set) waitDetached(ctx context.Context, e *setDisk, mode RemoveMode) error {
	attached := func() bool { return e.served.Server.Stats().Connected }
	switch {
	case mode == RemoveForce || !attached():
		return nil
	case mode == RemoveIfDetached:
		return fmt.Errorf("disk %s: %w: detach the guest first, or remove with --force (drops it) or --drain (waits for it to leave)",
			e.spec.Name, ErrAttached)
	}
	tk := time.NewTicker(drainPoll)
	defer tk.Stop()
	for attached() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("disk %s: %w still after waiting for it to leave (%v): remove with --force to drop it",
				e.spec.Name, ErrAttached, context.Cause(ctx))
		case <-tk.C:
		}
	}
	return nil
}

// stop shuts e's server down and closes its BTT and medium; it returns
// the first error. A server that had stopped on its own was logged then
// and listed since: removing it is not an error.
func (s *Set) stop(e *setDisk) error {
	e.cancel()
	<-e.done
	var err error
	if e.serveErr != nil && !e.selfStopped {
		err = fmt.Errorf("disk %s: %w", e.spec.Name, e.serveErr)
	}
	if cerr := e.d.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("disk %s: closing the BTT: %w", e.spec.Name, cerr)
	}
	if cerr := e.m.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("disk %s: closing %s: %w", e.spec.Name, e.spec.Image, cerr)
	}
	if err == nil {
		s.log.WithField("disk", e.spec.Name).Info("image flushed and closed")
	}
	return err
}

// Close stops every disk, all at once (each within Grace, so that the
// whole fits the service manager's stop timeout), and refuses later Adds.
// It returns the disks' errors joined.
func (s *Set) Close() error {
	s.mu.Lock()
	s.closed = true
	var all []*setDisk
	for _, e := range s.disks {
		if e.ready && !e.removing {
			e.removing = true
			all = append(all, e)
		}
	}
	s.mu.Unlock()
	errs := make([]error, len(all))
	var wg sync.WaitGroup
	for i, e := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.stop(e)
		}()
	}
	wg.Wait()
	s.mu.Lock()
	for _, e := range all {
		delete(s.disks, e.spec.Name)
	}
	s.mu.Unlock()
	return errors.Join(errs...)
}
