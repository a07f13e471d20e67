package control

import (
	"bufio"
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

// maxRequestLine bounds one request line.
const maxRequestLine = 4096

// Request is one line sent to the control socket.
type Request struct {
	Cmd string `json:"cmd"`
}

// Reply is one line answered. Exactly one of Status, Stats and Detached
// is set on success, for the status, stats and detach commands.
type Reply struct {
	OK       bool         `json:"ok"`
	Error    string       `json:"error,omitempty"`
	Status   *Status      `json:"status,omitempty"`
	Stats    *vhost.Stats `json:"stats,omitempty"`
	Detached *bool        `json:"detached,omitempty"`
}

// Server answers control requests for a Target.
type Server struct {
	t        Target
	interval time.Duration
	idle     time.Duration
	maxConns int
	log      logrus.FieldLogger
	start    time.Time
	quit     chan struct{}
	wg       sync.WaitGroup // the sampler and every connection's goroutine

	mu sync.Mutex // guards the fields below
	// prev and last are the two latest samples: rates are their difference.
	prev, last vhost.Stats
	listeners  map[net.Listener]struct{}
	conns      map[net.Conn]struct{}
	closed     bool
}

// NewServer starts sampling t every interval (DefaultInterval when zero),
// with the other Options at their defaults. Close stops it.
func NewServer(t Target, interval time.Duration) *Server {
	return NewServerWithOptions(t, Options{Interval: interval})
}

// NewServerWithOptions starts sampling t as o says. Close stops it.
func NewServerWithOptions(t Target, o Options) *Server {
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
	s := &Server{t: t, interval: o.Interval, idle: o.IdleTimeout, maxConns: o.MaxConns,
		log: lg.WithField("component", "control"), start: time.Now(), quit: make(chan struct{}),
		listeners: map[net.Listener]struct{}{}, conns: map[net.Conn]struct{}{}}
	s.last = t.Stats()
	s.prev = s.last
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
			st := s.t.Stats()
			s.mu.Lock()
			s.prev, s.last = s.last, st
			s.mu.Unlock()
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
	for c.SetReadDeadline(time.Now().Add(s.idle)); sc.Scan(); c.SetReadDeadline(time.Now().Add(s.idle)) {
		c.SetWriteDeadline(time.Now().Add(s.idle))
		if err := enc.Encode(s.Handle(sc.Bytes())); err != nil {
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
	if err := json.Unmarshal(line, &req); err != nil {
		return Reply{Error: fmt.Sprintf("bad request: %v", err)}
	}
	switch req.Cmd {
	case "status":
		st := s.Status()
		return Reply{OK: true, Status: &st}
	case "stats":
		st := s.t.Stats()
		return Reply{OK: true, Stats: &st}
	case "detach":
		d := s.t.Detach()
		return Reply{OK: true, Detached: &d}
	}
	return Reply{Error: fmt.Sprintf("unknown cmd %q: want status, stats or detach", req.Cmd)}
}
