package vhost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvblk/nvblk/internal/acceptretry"
	"github.com/sirupsen/logrus"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("vhost: server closed")

// Options configure a Server.
type Options struct {
	// PollDuration is how long a queue worker busy-polls its ring before
	// sleeping on the kick eventfd (--poll-us). Zero sleeps at once.
	PollDuration time.Duration
	// Logger receives protocol logs; nil means logrus.StandardLogger().
	Logger logrus.FieldLogger
	// MessageTimeout bounds a vhost-user message once its first byte has
	// arrived; zero means DefaultMessageTimeout.
	MessageTimeout time.Duration
}

// Server serves one vhost-user front-end connection at a time for one
// Backend. Later connections wait in the listen backlog until the current
// one ends.
type Server struct {
	be      Backend
	opts    Options
	log     *logrus.Entry
	connSeq atomic.Uint64
	// counters are each queue's statistics (stats.go), kept across
	// connections; only the queue's worker writes them.
	counters []queueCounters
	// slot holds a token while no connection is being served: the
	// vhost-user model is one front-end per device.
	slot chan struct{}
	// quit is closed by Shutdown.
	quit chan struct{}

	mu        sync.Mutex // guards the fields below
	listeners map[net.Listener]struct{}
	cur       *session
	closed    bool
}

// NewServer returns a server for be.
func NewServer(be Backend, opts Options) *Server {
	var lg logrus.FieldLogger = logrus.StandardLogger()
	if opts.Logger != nil {
		lg = opts.Logger
	}
	s := &Server{
		be: be, opts: opts, log: lg.WithField("component", "vhost"),
		slot: make(chan struct{}, 1), quit: make(chan struct{}),
		counters:  make([]queueCounters, be.NumQueues()),
		listeners: map[net.Listener]struct{}{},
	}
	s.slot <- struct{}{}
	return s
}

// FileListener adopts an already-listening unix socket passed as fd (--fd).
// The listener owns a duplicate; fd itself is closed.
func FileListener(fd int) (*net.UnixListener, error) {
	f := os.NewFile(uintptr(fd), fmt.Sprintf("fd-%d", fd))
	if f == nil {
		return nil, fmt.Errorf("vhost: fd %d: invalid", fd)
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("vhost: fd %d: %w", fd, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("vhost: fd %d: not a unix socket listener", fd)
	}
	return ul, nil
}

// Serve accepts front-ends on l and serves them one after another until
// Shutdown (ErrServerClosed) or until l is closed by someone else (an error
// wrapping net.ErrClosed). A connection that fails or is dropped for a
// malformed message does not stop it, nor does any other accept error:
// running out of file descriptors (EMFILE, ENFILE), a connection aborted
// before it was accepted and the like are retried after a pause that
// doubles from 5 ms to 1 s while they last, as net/http does, and logged
// at most once per acceptLogEvery. Shutdown closes l,
// also when it came first: then Serve closes l and returns at once (so a
// signal that ends ServeContext before its Serve goroutine ran leaves no
// listener open and no socket file behind).
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
	retry := acceptretry.Retry{Prefix: "vhost"}
	for {
		select {
		case <-s.slot:
		case <-s.quit:
			return ErrServerClosed
		}
		c, err := l.Accept()
		if err != nil {
			s.slot <- struct{}{}
			select {
			case <-s.quit:
				return ErrServerClosed
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("vhost: accept: %w", err)
			}
			select {
			case <-time.After(retry.Failed(s.log, err)):
			case <-s.quit:
				return ErrServerClosed
			}
			continue
		}
		retry.Succeeded(s.log)
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			s.slot <- struct{}{}
			continue
		}
		s.serveConn(uc)
		s.slot <- struct{}{}
	}
}

func (s *Server) serveConn(c *net.UnixConn) {
	sess := newSession(s, c)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.cur = sess
	s.mu.Unlock()
	sess.serve()
	s.mu.Lock()
	s.cur = nil
	s.mu.Unlock()
}

// Shutdown stops accepting, stops the queue workers after their in-flight
// requests complete, closes the connection and flushes the backend.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	for l := range s.listeners {
		l.Close()
	}
	cur := s.cur
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer close(done)
		if cur != nil {
			cur.close()
		}
		// Wait for the serving goroutine to let go of the slot.
		select {
		case <-s.slot:
			s.slot <- struct{}{}
		case <-ctx.Done():
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("vhost: shutdown: %w", ctx.Err())
	}
	if err := s.be.Flush(); err != nil {
		return fmt.Errorf("vhost: shutdown: flush: %w", err)
	}
	return nil
}

// ServeContext serves front-ends on l like Serve until ctx is done (a
// signal, in `nvblk serve`), then shuts the server down: in-flight requests
// complete, the connection closes and the backend is flushed, all within
// grace. It returns nil after a clean shutdown; an accept error that stops
// Serve first is returned after the same shutdown.
func (s *Server) ServeContext(ctx context.Context, l net.Listener, grace time.Duration) error {
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	var serveErr error
	select {
	case serveErr = <-served:
		if errors.Is(serveErr, ErrServerClosed) {
			serveErr = nil // shut down by someone else
		}
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := s.Shutdown(sctx)
	if serveErr == nil && ctx.Err() != nil {
		select {
		case e := <-served:
			if !errors.Is(e, ErrServerClosed) {
				serveErr = e
			}
		case <-sctx.Done():
			serveErr = fmt.Errorf("vhost: serve did not stop within %v", grace)
		}
	}
	return errors.Join(serveErr, err)
}

// Detach drops the current front-end, if any, as if it had disconnected:
// the connection closes at once, its queues finish the requests they took,
// then the server accepts the next front-end. It reports whether one was
// connected. It returns without waiting for any of that: a guest request
// that never completes cannot hold up the operator.
func (s *Server) Detach() bool {
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if cur == nil {
		return false
	}
	return cur.detach()
}
