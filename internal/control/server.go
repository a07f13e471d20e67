package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/nvblk/nvblk/vhost"
)

// Target is what the control socket controls: a *vhost.Server.
type Target interface {
	Stats() vhost.Stats
	Detach() bool
}

// DefaultInterval is how often the server samples the counters for rates.
const DefaultInterval = time.Second

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

// NewServer starts sampling t every interval (DefaultInterval when zero).
// Close stops it.
func NewServer(t Target, interval time.Duration) *Server {
	if interval <= 0 {
		interval = DefaultInterval
	}
	s := &Server{t: t, interval: interval, start: time.Now(), quit: make(chan struct{}),
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

// Serve answers connections on l until Close; it closes l.
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
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.listeners, l)
			s.mu.Unlock()
			l.Close()
			if closed {
				return nil
			}
			return fmt.Errorf("control: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
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
	for sc.Scan() {
		if err := enc.Encode(s.Handle(sc.Bytes())); err != nil {
			return
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
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
