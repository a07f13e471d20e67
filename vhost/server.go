package vhost

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
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
	// PollDuration is how long a queue worker busy-polls its empty ring
	// before sleeping on the kick eventfd. Zero (the default) adapts each
	// queue's window to its traffic, from none up to 50 µs (poll.go:
	// polling while requests keep arriving, sleeping at once when they
	// stop); a positive duration is a fixed window (--poll-us N);
	// NeverPoll sleeps at once (--poll-us 0).
	PollDuration time.Duration
	// Logger receives protocol logs; nil means logrus.StandardLogger().
	Logger logrus.FieldLogger
	// MessageTimeout bounds a vhost-user message once its first byte has
	// arrived; zero means DefaultMessageTimeout.
	MessageTimeout time.Duration
	// Migration offers VHOST_F_LOG_ALL and PROTOCOL_F_LOG_SHMFD, the dirty
	// logging QEMU needs to live-migrate a guest (without them QEMU
	// refuses to). It is off by default: under load, a guest migrated in
	// the tests has been seen with corrupt memory on its destination, and
	// until that is understood a guest should not be moved by default.
	Migration bool
	// MaxSessions bounds the front-ends served at once; zero means
	// DefaultMaxSessions. One more is refused (accepted, logged and
	// closed) rather than left waiting unanswered.
	MaxSessions int
}

// DefaultMaxSessions is how many front-ends a Server serves at once unless
// Options.MaxSessions says otherwise. A live migration needs two: the
// destination QEMU (-incoming) connects and waits for the handshake's
// replies while the source still runs the guest; the others leave room for
// a reconnecting front-end whose old connection has not yet been seen to
// close, and for an operator's tools.
const DefaultMaxSessions = 4

// Server serves vhost-user front-ends for one Backend, each connection a
// session with its own memory table, rings, inflight region and dirty
// log, up to Options.MaxSessions at once. The sessions share the Backend:
// each queue of each session gets its own Handler.
type Server struct {
	be          Backend
	opts        Options
	maxSessions int
	log         *logrus.Entry
	connSeq     atomic.Uint64
	// quit is closed by Shutdown.
	quit chan struct{}
	// serving counts the sessions' goroutines, for Shutdown. Add is
	// called under mu while !closed, so before Shutdown's Wait.
	serving sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{} // those being served
	// retired are each queue's statistics (stats.go) of the sessions
	// that ended, so that counts accumulate over the server's life;
	// written under mu only, when a session ends.
	retired []queueCounters
	closed  bool
}

// NewServer returns a server for be.
func NewServer(be Backend, opts Options) *Server {
	var lg logrus.FieldLogger = logrus.StandardLogger()
	if opts.Logger != nil {
		lg = opts.Logger
	}
	maxSessions := opts.MaxSessions
	if maxSessions <= 0 {
		maxSessions = DefaultMaxSessions
	}
	return &Server{
		be: be, opts: opts, maxSessions: maxSessions, log: lg.WithField("component", "vhost"),
		quit:      make(chan struct{}),
		retired:   make([]queueCounters, be.NumQueues()),
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*session]struct{}{},
	}
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

// Serve accepts front-ends on l and serves each on its own goroutine, up
// to Options.MaxSessions at once (one more is closed at once, with a
// warning), until Shutdown (ErrServerClosed) or until l is closed by
// someone else (an error wrapping net.ErrClosed). A connection that fails
// or is dropped for a malformed message does not stop it, nor does any
// other accept error:
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
		case <-s.quit:
			return ErrServerClosed
		default:
		}
		c, err := l.Accept()
		if err != nil {
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
			continue
		}
		s.startSession(uc)
	}
}

// startSession serves c on a goroutine of its own, or closes it when the
// server is shutting down or already serves MaxSessions front-ends.
func (s *Server) startSession(c *net.UnixConn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	if n := len(s.sessions); n >= s.maxSessions {
		s.mu.Unlock()
		lg := s.log
		if p := peerOf(c); p.known {
			lg = lg.WithField("peer_pid", p.pid)
		}
		// Refused, not left in the backlog: a front-end waiting there
		// hangs on its first reply without a word on either side.
		lg.WithField("sessions", n).Warnf("vhost: refusing a front-end: %d already served, the most at once (MaxSessions)", n)
		c.Close()
		return
	}
	sess := newSession(s, c)
	s.sessions[sess] = struct{}{}
	s.serving.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.serving.Done()
		sess.serve()
		s.mu.Lock()
		delete(s.sessions, sess)
		// Its workers have stopped (serve closed the session): its
		// counts are final, and move to the totals with the session gone
		// in one step, so Stats counts them once.
		for i := range s.retired {
			s.retired[i].add(&sess.counters[i])
		}
		s.mu.Unlock()
	}()
}

// liveSessions returns the sessions being served, oldest first.
func (s *Server) liveSessions() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.liveSessionsLocked()
}

// The caller holds s.mu.
func (s *Server) liveSessionsLocked() []*session {
	out := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		out = append(out, sess)
	}
	slices.SortFunc(out, func(a, b *session) int { return cmp.Compare(a.id, b.id) })
	return out
}

// NotifyConfigChange tells every front-end that gave a back-end request
// channel that the device's config space changed (a disk that grew), and
// waits for each to acknowledge when REPLY_ACK was negotiated. It returns
// how many were told, and the errors of those that could not be.
func (s *Server) NotifyConfigChange() (told int, err error) {
	var errs []error
	for _, sess := range s.liveSessions() {
		ok, err := sess.notifyConfigChange()
		if err != nil {
			errs = append(errs, fmt.Errorf("session %d: %w", sess.id, err))
			continue
		}
		if ok {
			told++
		}
	}
	return told, errors.Join(errs...)
}

// Shutdown stops accepting, stops the queue workers after their in-flight
// requests complete, closes the connections and flushes the backend.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	for l := range s.listeners {
		l.Close()
	}
	live := s.liveSessionsLocked()
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for _, sess := range live {
			wg.Go(sess.close) // each waits for its own requests
		}
		wg.Wait()
		s.serving.Wait() // and for the sessions' goroutines to finish
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

// Detach drops every front-end being served, as if each had disconnected:
// the connections close at once, their queues finish the requests they
// took. It reports whether one was connected. It returns without waiting
// for any of that: a guest request that never completes cannot hold up the
// operator. DetachSession drops one.
func (s *Server) Detach() bool {
	dropped := false
	for _, sess := range s.liveSessions() {
		if sess.detach() {
			dropped = true
		}
	}
	return dropped
}

// DetachSession drops the front-end of session id (SessionInfo.ID) as
// Detach drops them all, and reports whether it was being served.
func (s *Server) DetachSession(id uint64) bool {
	for _, sess := range s.liveSessions() {
		if sess.id == id {
			return sess.detach()
		}
	}
	return false
}
