package vhost

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

func TestBadChainLogIsRateLimited(t *testing.T) {
	var l logLimiter
	t0 := time.Unix(1000, 0)
	var logged int
	for i := 0; i < 100; i++ {
		if ok, _ := l.note(t0.Add(time.Duration(i) * time.Millisecond)); ok {
			logged++
		}
	}
	if logged != logBurst || l.total != 100 {
		t.Fatalf("logged %d of %d in 100ms, want %d", logged, l.total, logBurst)
	}
	// The next window's first line says how many went unlogged.
	ok, suppressed := l.note(t0.Add(2 * time.Second))
	if !ok || suppressed != 100-logBurst {
		t.Fatalf("next window: log %v, unlogged %d; want true, %d", ok, suppressed, 100-logBurst)
	}
	if ok, suppressed := l.note(t0.Add(2*time.Second + time.Millisecond)); !ok || suppressed != 0 {
		t.Fatalf("second line of the window: log %v, unlogged %d", ok, suppressed)
	}
}

// okBackend is a one-queue device that completes every request at once
// with status OK (the last writable byte of the chain).
type okBackend struct{}

func (okBackend) Features() uint64          { return virtio.FVersion1 | virtio.FRingEventIdx }
func (okBackend) Config() []byte            { return make([]byte, 60) }
func (okBackend) NumQueues() int            { return 1 }
func (okBackend) NewHandler(uint64) Handler { return okBackend{} }
func (okBackend) Flush() error              { return nil }

func (okBackend) Handle(c *virtq.Chain) Outcome {
	for i := len(c.Segments) - 1; i >= 0; i-- {
		if seg := c.Segments[i]; seg.Writable && len(seg.Buf) > 0 {
			seg.Buf[len(seg.Buf)-1] = virtio.BlkSOK
			return Outcome{Written: 1, Op: OpOther, Status: StatusOK}
		}
	}
	return Outcome{Op: OpOther, Status: StatusOther}
}

// servedQueue serves okBackend with opts and attaches a one-queue front-end
// to it; it returns the queue and its worker.
func servedQueue(t *testing.T, opts Options) (*frontend.Queue, *worker) {
	t.Helper()
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	opts.Logger = lg
	srv := NewServer(okBackend{}, opts)
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
	d, err := frontend.Connect(l.Addr().String(), frontend.Options{EventIdx: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	live := srv.liveSessions()
	if len(live) != 1 {
		t.Fatalf("%d sessions, want 1", len(live))
	}
	s := live[0]
	s.mu.Lock()
	w := s.vrings[0].w
	s.mu.Unlock()
	if w == nil {
		t.Fatal("the front-end's queue has no worker")
	}
	return d.Queues[0], w
}

// waitAsleep waits, a bounded while, for w to sleep on its kick and stay
// asleep for settle. A kick whose request the worker took while polling
// is still counted in the eventfd, and it ends the worker's next sleep
// at once: that wake-up is the kick's, and waitAsleep waits it out.
func waitAsleep(t *testing.T, w *worker, why string) {
	t.Helper()
	const settle = 20 * time.Millisecond
	for deadline := time.Now().Add(10 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the worker is not asleep on its kick for %v in 10s (%d polls, %d sleeps)", why, settle, w.polls.Load(), w.sleeps.Load())
		}
		sleeps := w.sleeps.Load()
		if !w.asleep.Load() {
			time.Sleep(time.Millisecond)
			continue
		}
		time.Sleep(settle)
		if w.asleep.Load() && w.sleeps.Load() == sleeps {
			return
		}
	}
}

// A queue whose front-end stops sending ends up asleep on its kick, and
// stays there: nothing but a kick wakes it, however its poll window is
// set. A kick then still wakes it, the request completes, and it goes
// back to sleep.
func TestAnIdleQueueSleepsOnItsKickAndAKickWakesIt(t *testing.T) {
	cases := []struct {
		name string
		poll time.Duration
	}{
		{"adaptive (the default)", 0},
		{"a fixed window", time.Millisecond},
		{"never polling", NeverPoll},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fdcheck.Check(t)
			q, w := servedQueue(t, Options{PollDuration: c.poll})
			// QD1 traffic, each request sent as soon as the last completed:
			// what grows an adaptive window.
			for range 200 {
				if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 512)}, 10*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			waitAsleep(t, w, "after the traffic stopped")
			polls, sleeps := w.polls.Load(), w.sleeps.Load()
			time.Sleep(50 * time.Millisecond)
			if p, s := w.polls.Load(), w.sleeps.Load(); p != polls || s != sleeps || !w.asleep.Load() {
				t.Fatalf("idle for 50ms, the worker polled %d and slept %d times more (asleep now: %v): something other than a kick woke it",
					p-polls, s-sleeps, w.asleep.Load())
			}

			if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 512)}, 10*time.Second); err != nil {
				t.Fatalf("a kicked request to the sleeping queue: %v", err)
			}
			waitAsleep(t, w, "after the kicked request")
			if s := w.sleeps.Load(); s != sleeps+1 {
				t.Fatalf("the worker slept %d times more around one kicked request, want 1", s-sleeps)
			}
			if c.poll == NeverPoll && w.polls.Load() != 0 {
				t.Fatalf("a worker told never to poll polled %d times", w.polls.Load())
			}
		})
	}
}

// TestAWorkerOfADetachedSessionTakesNoMoreRequests: Detach marks the
// session closing and closes its connection; the session stops its
// workers when it sees that, a moment later. A worker polling its ring in
// that moment must not serve the detached front-end's next request.
func TestAWorkerOfADetachedSessionTakesNoMoreRequests(t *testing.T) {
	q, w := servedQueue(t, Options{PollDuration: time.Hour}) // always polling
	if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 512)}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// What Detach does first; the connection stays open here, so the
	// session never stops the worker itself.
	w.closing.Store(true)
	if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 512)}, 200*time.Millisecond); err == nil {
		t.Fatal("a request after Detach was served")
	}
}
