package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvblk/nvblk/internal/acceptretry"
	"github.com/sirupsen/logrus"
)

// Defaults of ServerOptions.
const (
	// DefaultMaxConnections: a migration needs one; the rest leave room
	// for a client reconnecting before its old connection is seen to
	// close, and for an operator's qemu-img or nbdinfo.
	DefaultMaxConnections = 8
	// DefaultMaxInFlight is how many requests of one connection are
	// served at once; qemu's NBD client keeps up to 16 in flight.
	DefaultMaxInFlight = 16
	// DefaultHandshakeTimeout bounds the option haggling: a client that
	// connects and says nothing does not hold a connection slot for ever.
	DefaultHandshakeTimeout = 10 * time.Second
)

// maxInFlightBytes bounds the data buffers one connection holds at once
// (writes received, reads not yet sent): two maximal payloads, whatever
// MaxInFlight is.
const maxInFlightBytes = 2 * defaultMaxPayload

// shutdownGrace is how long Close lets in-flight replies take to reach a
// client: one that stopped reading does not hold Close up for longer.
const shutdownGrace = 5 * time.Second

// ServerOptions configure a Server.
type ServerOptions struct {
	// Logger receives connection logs; nil means logrus.StandardLogger().
	Logger logrus.FieldLogger
	// MaxConnections bounds the clients served at once; zero means
	// DefaultMaxConnections. One more is accepted, logged and closed.
	MaxConnections int
	// MaxInFlight bounds one connection's requests served at once; zero
	// means DefaultMaxInFlight. Past it the server stops reading the
	// connection until a request completes.
	MaxInFlight int
	// HandshakeTimeout bounds the handshake; zero means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
}

// Server serves Exports to NBD clients, each connection on its own
// goroutine.
type Server struct {
	opts    ServerOptions
	log     *logrus.Entry
	connSeq atomic.Uint64
	// serving counts the connections' goroutines, for Close. Add is called
	// under mu while !closed, so before Close's Wait.
	serving sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	exports   map[string]*served
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    bool
}

// NewServer returns a server with no exports.
func NewServer(opts ServerOptions) *Server {
	var lg logrus.FieldLogger = logrus.StandardLogger()
	if opts.Logger != nil {
		lg = opts.Logger
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	return &Server{
		opts: opts, log: lg.WithField("component", "nbd"),
		exports:   map[string]*served{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}
}

// AddExport serves e under name ("" is the default export, the one a
// client gets without naming any). Connections already in transmission
// keep the export they chose.
func (s *Server) AddExport(name string, e Export, opts ExportOptions) error {
	ex, err := newServed(name, e, opts)
	if err != nil {
		return err
	}
	if _, err := ex.size(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.exports[name]; dup {
		return fmt.Errorf("nbd: export %q already added", name)
	}
	s.exports[name] = ex
	return nil
}

// RemoveExport stops offering name to new clients; connections already
// using it go on until they end.
func (s *Server) RemoveExport(name string) {
	s.mu.Lock()
	delete(s.exports, name)
	s.mu.Unlock()
}

func (s *Server) lookup(name string) *served {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

func (s *Server) exportNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.exports))
	for n := range s.exports {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Serve accepts clients on l, unix or TCP, and serves each on its own
// goroutine until Close (ErrServerClosed) or until l is closed by someone
// else (an error wrapping net.ErrClosed). Other accept errors (running
// out of descriptors and the like) are retried after a pause, as the
// vhost-user server does. Close closes l.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	retry := acceptretry.Retry{Prefix: "nbd"}
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("nbd: accept: %w", err)
			}
			time.Sleep(retry.Failed(s.log, err))
			continue
		}
		retry.Succeeded(s.log)
		c, err := s.track(nc)
		if err != nil {
			continue
		}
		go func() {
			defer s.serving.Done()
			c.serve()
		}()
	}
}

// ServeConn serves one client on nc, already connected, and returns when
// the connection ends: nil when the client disconnected cleanly
// (NBD_OPT_ABORT, NBD_CMD_DISC or hanging up between requests). It
// closes nc.
func (s *Server) ServeConn(nc net.Conn) error {
	c, err := s.track(nc)
	if err != nil {
		return err
	}
	defer s.serving.Done()
	return c.serve()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers a connection, or closes it when the server is closed or
// serves MaxConnections already: refused at once rather than left waiting
// for a greeting that never comes.
func (s *Server) track(nc net.Conn) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		nc.Close()
		return nil, ErrServerClosed
	}
	if n := len(s.conns); n >= s.opts.MaxConnections {
		nc.Close()
		s.log.WithField("connections", n).WithField("peer", nc.RemoteAddr().String()).
			Warnf("nbd: refusing a client: %d already served, the most at once (MaxConnections)", n)
		return nil, fmt.Errorf("nbd: %d connections already served", n)
	}
	c := &conn{s: s, nc: nc, id: s.connSeq.Add(1)}
	c.log = s.log.WithField("conn", c.id)
	s.conns[c] = struct{}{}
	s.serving.Add(1)
	return c, nil
}

// Close stops accepting, ends every handshake, stops reading requests,
// waits for the requests in flight to be served and their replies sent
// (for at most a few seconds of a client not reading them), closes every
// connection and returns. Serve returns ErrServerClosed.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.serving.Wait()
		return nil
	}
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.shutdown()
	}
	s.mu.Unlock()
	s.serving.Wait()
	return nil
}

// conn is one client's connection.
type conn struct {
	s   *Server
	nc  net.Conn
	id  uint64
	log *logrus.Entry

	mu sync.Mutex // guards closing and the deadlines of nc
	// closing: Close has begun; no deadline may be lifted any more.
	closing bool
}

// shutdown makes the connection's reads fail now (the handshake ends, the
// request loop stops) and its writes within shutdownGrace.
func (c *conn) shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	c.nc.SetReadDeadline(time.Now())
	c.nc.SetWriteDeadline(time.Now().Add(shutdownGrace))
}

// setDeadline sets both deadlines unless Close has set them.
func (c *conn) setDeadline(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing {
		c.nc.SetDeadline(t)
	}
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// serve runs the handshake and then the transmission phase.
func (c *conn) serve() error {
	defer func() {
		c.nc.Close()
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	}()
	lg := c.log.WithField("peer", c.nc.RemoteAddr().String())
	c.setDeadline(time.Now().Add(c.s.opts.HandshakeTimeout))
	neg := negotiator{rw: c.nc, lookup: c.s.lookup, list: c.s.exportNames}
	ex, err := neg.run()
	if err != nil {
		return c.ended(lg, "handshake", err)
	}
	c.setDeadline(time.Time{})
	lg = lg.WithField("export", ex.name)
	lg.WithField("size", neg.size).WithField("read_only", ex.readOnly).Debug("nbd: client in transmission")
	sess := newSession(ex, neg.size, c.nc, c.s.opts.MaxInFlight, lg, func() { c.nc.Close() })
	return c.ended(lg, "transmission", sess.run())
}

// ended logs how the connection ended and returns what ServeConn reports.
func (c *conn) ended(lg *logrus.Entry, phase string, err error) error {
	switch {
	case c.isClosing():
		return ErrServerClosed
	case err == nil, errors.Is(err, errClientDone):
		lg.Debugf("nbd: client disconnected in %s", phase)
		return nil
	case errors.Is(err, io.EOF):
		lg.Debugf("nbd: client hung up in %s", phase)
		return nil
	}
	lg.WithError(err).Infof("nbd: dropping client in %s", phase)
	return fmt.Errorf("nbd: conn %d: %s: %w", c.id, phase, err)
}
