package vhost

import (
	"testing"
	"time"
)

const us = time.Microsecond

// The adaptive window's moves, one idle spell at a time: no clock, only
// the window polled and how long the ring then stayed empty.
func TestAdaptivePollWindowGrowsWhileRequestsFollowSoonAndShrinksWhenTheyDoNot(t *testing.T) {
	p := pollPolicy{start: 4 * us, max: 50 * us, grow: 2, shrink: 2}
	cases := []struct {
		name      string
		cur, idle time.Duration
		want      time.Duration
	}{
		{"a request the window caught keeps the window", 8 * us, 5 * us, 8 * us},
		{"a request at the window's very end keeps it", 8 * us, 8 * us, 8 * us},
		{"a request at once keeps even no window", 0, 0, 0},
		{"from none, a request soon after the sleep starts polling", 0, 10 * us, 4 * us},
		{"a request just past the window doubles it", 8 * us, 9 * us, 16 * us},
		{"a request at the longest idle worth polling for grows the window", 16 * us, 50 * us, 32 * us},
		{"growing stops at max", 32 * us, 40 * us, 50 * us},
		{"at max, a request at max keeps max", 50 * us, 50 * us, 50 * us},
		{"a request past max halves the window", 50 * us, 200 * us, 25 * us},
		{"halving below start stops polling", 4 * us, time.Second, 0},
		{"halving to start keeps start", 8 * us, time.Second, 4 * us},
		{"no window and a long idle stays at none", 0, time.Hour, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := p.next(c.cur, c.idle); got != c.want {
				t.Fatalf("next(%v, idle %v) = %v, want %v", c.cur, c.idle, got, c.want)
			}
		})
	}
}

// A queue driven at QD1 by a front-end that answers in 6 µs settles on a
// window that catches every request; once the front-end pauses for good
// (its requests a second apart), the window is gone within a few requests.
func TestAdaptivePollWindowSettlesOnQD1TrafficAndDecaysToNothingWhenItStops(t *testing.T) {
	pw := newPollWindow(0)
	for range 10 {
		// Caught by polling when the window covers it; else seen after the
		// kick's wake-up, a few µs later.
		idle := 6 * us
		if pw.cur < idle {
			idle += 5 * us
		}
		pw.idled(idle)
	}
	if pw.cur < 6*us || pw.cur > adaptivePoll.max {
		t.Fatalf("window %v after QD1 requests 6 µs apart: want one that catches them, at most %v", pw.cur, adaptivePoll.max)
	}
	for i := 0; pw.cur > 0; i++ {
		if i == 10 {
			t.Fatalf("window still %v after 10 requests a second apart", pw.cur)
		}
		pw.idled(time.Second)
	}
}

func TestPollDurationChoosesTheWindow(t *testing.T) {
	cases := []struct {
		name string
		d    time.Duration
		want pollWindow
	}{
		{"zero adapts, starting with none", 0, pollWindow{adaptive: true}},
		{"a duration is a fixed window", 50 * us, pollWindow{cur: 50 * us}},
		{"NeverPoll never polls", NeverPoll, pollWindow{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := newPollWindow(c.d); got != c.want {
				t.Fatalf("newPollWindow(%v) = %+v, want %+v", c.d, got, c.want)
			}
		})
	}
	fixed := newPollWindow(50 * us)
	fixed.idled(time.Hour)
	if fixed.cur != 50*us {
		t.Fatalf("a fixed window moved to %v after a long idle spell", fixed.cur)
	}
}
