package vhost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

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
