package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/acceptretry"
	"github.com/nvblk/nvblk/vhost"
)

// Target is what the control socket controls: a *vhost.Server.
type Target interface {
	Stats() vhost.Stats
	Detach() bool
}

// Grower is a Target whose disk can grow while it is served: the grow
// command. Size is the image's new size in bytes.
type Grower interface {
	Grow(size int64) (Grown, error)
}

// Mover is a Target whose disk can move to another host while it is
// served: the move command. To is the destination's NBD URI.
type Mover interface {
	Move(ctx context.Context, to string) (json.RawMessage, error)
}

// Grown is the grow command's answer.
type Grown struct {
	SectorsBefore uint64 `json:"sectors_before"`
	SectorsAfter  uint64 `json:"sectors_after"`
	ArenasAdded   int    `json:"arenas_added"`
	// FrontEndsTold is how many attached front-ends were sent the config
	// change (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG).
	FrontEndsTold int `json:"front_ends_told"`
}

// Defaults of Options.
const (
	// DefaultInterval is how often the server samples the counters for
	// rates.
	DefaultInterval = time.Second
	// DefaultIdleTimeout is how long a connection may wait between
	// request lines: `nvblk status` sends its one line at once.
	DefaultIdleTimeout = time.Minute
	// DefaultMaxConns bounds concurrent control connections: enough for
	// a few operators and scripts, few enough that connections left open
	// cannot take the descriptors the front-end needs.
	DefaultMaxConns = 16
)

// Options configure a Server; zero fields take the defaults.
type Options struct {
	Interval time.Duration // sampling interval for rates
	// IdleTimeout closes a connection that sends no whole request line
	// for that long; it also bounds writing one reply.
	IdleTimeout time.Duration
	// MaxConns caps concurrent connections: one more is answered with an
	// error line and closed.
	MaxConns int
	// Logger receives accept errors; nil means logrus.StandardLogger().
	Logger logrus.FieldLogger
}

// maxGrowSize bounds grow's size: 64 PiB, far past any pmem device, well
// inside what an int64 offset and the BTT's arena chain can address.
const maxGrowSize = 1 << 56

// maxRequestLine bounds one request line.
const maxRequestLine = 4096

// Request is one line sent to the control socket. A field it does not
// know is refused, so that a misspelt one is not silently ignored.
type Request struct {
	Cmd string `json:"cmd"`
	// Disk names the disk of stats, detach and disk-remove on a serve with
	// many disks.
	Disk string `json:"disk,omitempty"`
	// Spec is disk-add's disk: name=NAME,blk-file=FILE,socket-path=PATH...
	Spec string `json:"spec,omitempty"`
	// Mode and Timeout are disk-remove's: "force", "drain" (waiting up to
	// Timeout, a duration such as "30s") or none.
	Mode    RemoveMode `json:"mode,omitempty"`
	Timeout string     `json:"timeout,omitempty"`
	// Size is grow's new image size in bytes.
	Size int64 `json:"size,omitempty"`
	// Session is detach's one front-end (a SessionInfo.ID), 0 for all.
	Session uint64 `json:"session,omitempty"`
	// To is move's destination, an NBD URI (nbd://HOST:PORT/EXPORT or
	// nbd+unix:///EXPORT?socket=PATH).
	To string `json:"to,omitempty"`
}

// Reply is one line answered. On success Status, Stats or Detached is set
// for the status, stats and detach commands of a one-disk serve; a serve
// with many disks answers status and disk-list with Disks, disk-add with
// Disk.
type Reply struct {
	OK       bool         `json:"ok"`
	Error    string       `json:"error,omitempty"`
	Status   *Status      `json:"status,omitempty"`
	Stats    *vhost.Stats `json:"stats,omitempty"`
	Detached *bool        `json:"detached,omitempty"`
	Grown    *Grown       `json:"grown,omitempty"`
	// Moved is the move command's statistics (diskmove.Stats).
	Moved json.RawMessage `json:"moved,omitempty"`
	Disk  *DiskInfo       `json:"disk,omitempty"`
	Disks []DiskInfo      `json:"disks,omitempty"`
}

// Server answers control requests for a Target, or for every disk of a
// Disks.
type Server struct {
	t        Target // nil when disks is set
	disks    Disks
	interval time.Duration
	idle     time.Duration
	maxConns int
	log      logrus.FieldLogger
	start    time.Time
	quit     chan struct{}
	// ctx ends at Close: a request waiting (a drain) stops waiting.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the sampler and every connection's goroutine

	mu sync.Mutex // guards the fields below
	// samples are each target's two latest samples, by target: rates are
	// their difference. Keyed by the target, not a disk's name, so that a
	// disk removed and added again under its name starts afresh.
	samples   map[Target]*samplePair
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
}

// NewServer starts sampling t every interval (DefaultInterval when zero),
// with the other Options at their defaults. Close stops it.
func NewServer(t Target, interval time.Duration) *Server {
	return NewServerWithOptions(t, Options{Interval: interval})
}

// samplePair is a target's two latest samples.
type samplePair struct{ prev, last vhost.Stats }

// NewServerWithOptions starts sampling t as o says. Close stops it.
func NewServerWithOptions(t Target, o Options) *Server {
	return newServer(t, nil, o)
}

func newServer(t Target, d Disks, o Options) *Server {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	var lg logrus.FieldLogger = logrus.StandardLogger()
	if o.Logger != nil {
		lg = o.Logger
	}
	s := &Server{t: t, disks: d, interval: o.Interval, idle: o.IdleTimeout, maxConns: o.MaxConns,
		log: lg.WithField("component", "control"), start: time.Now(), quit: make(chan struct{}),
		samples: map[Target]*samplePair{}, listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.takeSamples()
	s.wg.Add(1)
	go s.sample()
	return s
}

func (s *Server) sample() {
	defer s.wg.Done()
	tk := time.NewTicker(s.interval)
	defer tk.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-tk.C:
			s.takeSamples()
		}
	}
}

// takeSamples samples every target; a target's first sample is both of
// its pair, and the pairs of targets gone (disks removed) are dropped.
func (s *Server) takeSamples() {
	targets := s.targets()
	now := make([]vhost.Stats, len(targets))
	for i, d := range targets {
		now[i] = d.Target.Stats() // outside s.mu: Stats takes the server's locks
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[Target]bool, len(targets))
	for i, d := range targets {
		seen[d.Target] = true
		if p := s.samples[d.Target]; p != nil {
			p.prev, p.last = p.last, now[i]
		} else {
			s.samples[d.Target] = &samplePair{prev: now[i], last: now[i]}
		}
	}
	for t := range s.samples {
		if !seen[t] {
			delete(s.samples, t)
		}
	}
}

// Serve answers connections on l until Close (then it returns nil) or until
// l is closed by someone else; it closes l. Other accept errors (out of
// file descriptors, a connection aborted before it was accepted) are
// retried after a pause that doubles from 5 ms to 1 s while they last, and
// logged at most once per acceptLogEvery.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	retry := acceptretry.Retry{Prefix: "control"}
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				s.mu.Lock()
				delete(s.listeners, l)
				s.mu.Unlock()
				l.Close()
				if closed {
					return nil
				}
				return fmt.Errorf("control: accept: %w", err)
			}
			select {
			case <-time.After(retry.Failed(s.log, err)):
			case <-s.quit: // Close closed l too: the next Accept says so
			}
			continue
		}
		retry.Succeeded(s.log)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			continue
		}
		if len(s.conns) >= s.maxConns {
			s.mu.Unlock()
			s.refuse(c)
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// Close stops the listeners, the connections and the sampler, and waits
// for them.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
		s.cancel()
	}
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// refuse answers a connection over the cap with an error line and closes
// it. The line fits any socket buffer; the deadline is for a peer that
// shrank its own.
func (s *Server) refuse(c net.Conn) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	json.NewEncoder(c).Encode(Reply{Error: fmt.Sprintf("too many control connections (%d open)", s.maxConns)})
	c.Close()
}

func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 512), maxRequestLine)
	enc := json.NewEncoder(c)
	// Every line and every reply has its deadline: a peer that connects
	// and says nothing, or stops reading, holds a descriptor only so long.
	// The write deadline is set once the reply is ready: a drain may take
	// longer than the idle timeout to answer.
	for c.SetReadDeadline(time.Now().Add(s.idle)); sc.Scan(); c.SetReadDeadline(time.Now().Add(s.idle)) {
		c.SetReadDeadline(time.Time{})
		r := s.Handle(sc.Bytes())
		c.SetWriteDeadline(time.Now().Add(s.idle))
		if err := enc.Encode(r); err != nil {
			return
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		c.SetWriteDeadline(time.Now().Add(s.idle))
		enc.Encode(Reply{Error: fmt.Sprintf("request line longer than %d bytes", maxRequestLine)})
	}
}

// Handle answers one request line.
func (s *Server) Handle(line []byte) Reply {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Reply{Error: fmt.Sprintf("bad request: %v", err)}
	}
	if dec.More() {
		return Reply{Error: "bad request: more than one JSON value on the line"}
	}
	if s.disks != nil {
		return s.handleDisks(req)
	}
	if req.Disk != "" || req.Spec != "" || req.Mode != "" || req.Timeout != "" || req.Size != 0 && req.Cmd != "grow" || req.Session != 0 && req.Cmd != "detach" || req.To != "" && req.Cmd != "move" {
		return Reply{Error: fmt.Sprintf("%s: this serve has one disk, given with --blk-file: it takes no disk, spec, mode or timeout", req.Cmd)}
	}
	switch req.Cmd {
	case "status":
		st := s.Status()
		return Reply{OK: true, Status: &st}
	case "stats":
		st := s.t.Stats()
		return Reply{OK: true, Stats: &st}
	case "detach":
		if req.Session != 0 {
			sl, ok := s.t.(SessionLister)
			if !ok {
				return Reply{Error: "this serve does not tell its front-ends apart"}
			}
			d := sl.DetachSession(req.Session)
			return Reply{OK: true, Detached: &d}
		}
		d := s.t.Detach()
		return Reply{OK: true, Detached: &d}
	case "grow":
		g, ok := s.t.(Grower)
		if !ok {
			return Reply{Error: "this serve's disk cannot grow"}
		}
		if req.Size <= 0 || req.Size > maxGrowSize {
			return Reply{Error: fmt.Sprintf("size %d bytes: want the image's new size, up to %d", req.Size, int64(maxGrowSize))}
		}
		grown, err := g.Grow(req.Size)
		if err != nil {
			return Reply{Error: err.Error()}
		}
		return Reply{OK: true, Grown: &grown}
	case "move":
		m, ok := s.t.(Mover)
		if !ok {
			return Reply{Error: "this serve's disk cannot move"}
		}
		if req.To == "" || len(req.To) > maxRequestLine {
			return Reply{Error: "move: want to, the destination's NBD URI (nbd://HOST:PORT or nbd+unix:///?socket=PATH)"}
		}
		// A move waits for the guest's migration to switch over: it
		// ends with the serve (ctx), not with a connection's idle time.
		st, err := m.Move(s.ctx, req.To)
		if err != nil {
			return Reply{Error: err.Error(), Moved: st}
		}
		return Reply{OK: true, Moved: st}
	case "disk-add", "disk-remove", "disk-list":
		return Reply{Error: fmt.Sprintf("%s: this serve has the one disk its --blk-file gave; "+
			"start nvblk serve with --disk to add and remove disks at run time", req.Cmd)}
	}
	return Reply{Error: fmt.Sprintf("unknown cmd %q: want status, stats, detach, grow or move", req.Cmd)}
}
