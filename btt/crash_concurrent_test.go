package btt_test

import (
	"math/rand/v2"
	"sync"
	"testing"
)

// turnstile runs goroutines one at a time, switching only at persist
// barriers, in an order drawn from a seed: the interleaving of their stores
// and barriers is then the same on every run, and the crash points of a
// concurrent workload are reproducible. A goroutine switched out at a
// barrier has its stores before that barrier still pending while the others
// run, so crash images mix the un-persisted steps of several writes.
//
// It only works for goroutines that never block on each other inside the
// engine: here each one owns LBAs under its own map lock, and there are more
// lanes than goroutines.
type turnstile struct {
	mu      sync.Mutex
	rng     *rand.Rand
	turn    []chan struct{}
	running []bool
	current int
	done    chan struct{}
}

func newTurnstile(n int, seed uint64) *turnstile {
	ts := &turnstile{rng: rand.New(rand.NewPCG(seed, 3)), done: make(chan struct{})}
	for i := 0; i < n; i++ {
		ts.turn = append(ts.turn, make(chan struct{}))
		ts.running = append(ts.running, true)
	}
	return ts
}

// pick draws the next goroutine to run among those still running.
func (ts *turnstile) pick() int {
	var live []int
	for g, r := range ts.running {
		if r {
			live = append(live, g)
		}
	}
	return live[ts.rng.IntN(len(live))]
}

// start lets the first goroutine go.
func (ts *turnstile) start() {
	ts.mu.Lock()
	ts.current = ts.pick()
	ts.mu.Unlock()
	ts.turn[ts.current] <- struct{}{}
}

// wait blocks goroutine g until its first turn.
func (ts *turnstile) wait(g int) { <-ts.turn[g] }

// atBarrier is the medium's barrier hook: the running goroutine may be
// switched out here.
func (ts *turnstile) atBarrier() {
	ts.mu.Lock()
	me, next := ts.current, ts.pick()
	ts.current = next
	ts.mu.Unlock()
	if next == me {
		return
	}
	ts.turn[next] <- struct{}{}
	<-ts.turn[me]
}

// finish retires the running goroutine and hands over to another.
func (ts *turnstile) finish() {
	ts.mu.Lock()
	ts.running[ts.current] = false
	any := false
	for _, r := range ts.running {
		any = any || r
	}
	if !any {
		ts.mu.Unlock()
		close(ts.done)
		return
	}
	ts.current = ts.pick()
	next := ts.current
	ts.mu.Unlock()
	ts.turn[next] <- struct{}{}
}

// recordConcurrent runs goroutines writers, each issuing ops operations on
// its own eight LBAs (64 apart: a map lock of their own), interleaved at
// barriers by a seeded turnstile.
func recordConcurrent(t *testing.T, w workload, goroutines int) *recording {
	t.Helper()
	rec, d := startRecording(t, w)
	ts := newTurnstile(goroutines, w.seed)
	rec.m.SetBarrierHook(ts.atBarrier)
	errs := make([]error, goroutines)
	for g := 0; g < goroutines; g++ {
		go func() {
			ts.wait(g)
			defer ts.finish()
			rng := rand.New(rand.NewPCG(w.seed, uint64(10+g)))
			for i := 0; i < w.ops; i++ {
				kind, lba, n := rec.randomOp(rng)
				lba = uint64(g)*64 + lba%8
				n = min(n, uint64(g)*64+8-lba)
				// No lock around the model: the turnstile runs one
				// goroutine at a time, and a lock held across a barrier
				// would stop the next one.
				err := rec.issue(d, kind, lba, n, rec.m.Barriers())
				if err != nil {
					errs[g] = err
					return
				}
			}
		}()
	}
	ts.start()
	<-ts.done
	rec.m.SetBarrierHook(nil)
	for g, err := range errs {
		if err != nil {
			t.Fatalf("%v: goroutine %d: %v", w, g, err)
		}
	}
	return rec
}

func TestCrashAtEveryBarrierOfTwoInterleavedWritersLeavesEachSectorOldOrNew(t *testing.T) {
	for _, lbaSize := range []uint32{512, 4096} {
		rec := recordConcurrent(t, workload{lbaSize: lbaSize, seed: 2000 + uint64(lbaSize), setup: 300, ops: 15}, 2)
		rec.verifyAll(t)
	}
}
