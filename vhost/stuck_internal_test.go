package vhost

import (
	"context"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// stuckBackend is a one-queue device whose requests do not complete until
// the test lets them.
type stuckBackend struct {
	entered chan struct{} // a request reached the handler
	release chan struct{} // closed: requests complete
	once    sync.Once
}

func (b *stuckBackend) Features() uint64          { return virtio.FVersion1 }
func (b *stuckBackend) Config() []byte            { return make([]byte, 60) }
func (b *stuckBackend) NumQueues() int            { return 1 }
func (b *stuckBackend) NewHandler(uint64) Handler { return b }
func (b *stuckBackend) Flush() error              { return nil }
func (b *stuckBackend) unstick()                  { b.once.Do(func() { close(b.release) }) }

func (b *stuckBackend) Handle(c *virtq.Chain) Outcome {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-b.release
	return Outcome{Op: OpOther, Status: StatusOther}
}

// within runs f and fails t unless it returns within limit: a bound on a
// hang, not a measure of speed. f must not use t: it may outlive the test.
func within(t *testing.T, limit time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("%s still waiting after %v", what, limit)
	}
}

// TestStatsAndDetachDoNotWaitBehindAStuckRequest: a guest request never
// completes, and the front-end asks for the ring back (GET_VRING_BASE),
// which waits for it while holding the session. Stats (status, metrics)
// and Detach still answer, and the detached front-end's session ends once
// the request does.
func TestStatsAndDetachDoNotWaitBehindAStuckRequest(t *testing.T) {
	fdcheck.Check(t)
	be := &stuckBackend{entered: make(chan struct{}, 1), release: make(chan struct{})}
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	srv := NewServer(be, Options{Logger: lg})
	l, err := vhostuser.Listen(filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	t.Cleanup(be.unstick) // before Shutdown: cleanups run last-in first-out

	d, err := frontend.Connect(l.Addr().String(), frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Queues[0].Submit(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 512)}); err != nil {
		t.Fatal(err)
	}
	d.Queues[0].Kick()
	within(t, 10*time.Second, "the request reaching the handler", func() { <-be.entered })
	stopped := make(chan error, 1)
	go func() { _, err := d.Conn.GetVringBase(0); stopped <- err }()
	waitSessionBusy(t, srv)

	var st Stats
	within(t, 10*time.Second, "Stats", func() { st = srv.Stats() })
	if !st.Connected || !st.Queues[0].Running || st.Queues[0].InFlight != 1 {
		t.Errorf("stats during the stuck request: connected %v, queue %+v", st.Connected, st.Queues[0])
	}
	var detached bool
	within(t, 10*time.Second, "Detach", func() { detached = srv.Detach() })
	if !detached {
		t.Error("Detach found no front-end")
	}
	if st := srv.Stats(); st.Connected {
		t.Error("Stats reports the detached front-end as connected")
	}
	be.unstick()
	within(t, 10*time.Second, "GET_VRING_BASE after the request completed", func() { <-stopped })
}

// waitSessionBusy waits until the current session is handling a request:
// its lock is held.
func waitSessionBusy(t *testing.T, srv *Server) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		live := srv.liveSessions()
		if len(live) == 0 {
			continue
		}
		cur := live[0]
		if !cur.mu.TryLock() {
			return
		}
		cur.mu.Unlock()
	}
	t.Fatal("the session never got to handle GET_VRING_BASE")
}
