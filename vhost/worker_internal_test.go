package vhost

import (
	"testing"
	"time"
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
