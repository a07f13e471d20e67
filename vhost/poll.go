package vhost

import "time"

// NeverPoll as Options.PollDuration makes every queue worker sleep on its
// kick eventfd as soon as its ring is empty (serve --poll-us 0).
const NeverPoll time.Duration = -1

// Adaptive polling (Options.PollDuration zero, serve's default). After a
// worker has drained its ring it may busy-poll the ring for a while before
// it sleeps on the kick: a request that arrives during that window is
// picked up without the kick's wake-up (a thread and a goroutine woken,
// 3-20 µs here), which is most of a QD1 round trip. Spinning costs a core
// for as long as the window lasts, so the window follows the traffic, as
// QEMU's AioContext polling does (util/aio-posix.c, the iothread's
// poll-max-ns, poll-grow and poll-shrink): after every idle spell the
// worker compares how long its ring stayed empty (idle) with the window it
// polled for, and
//
//   - idle within the window: polling caught the request; keep the window;
//   - idle past the window but within adaptivePoll.max: a longer window
//     would have caught it; grow the window (from nothing to start, else
//     times grow, up to max);
//   - idle past max: requests come too far apart for polling to pay;
//     shrink the window (divided by shrink, nothing once below start).
//
// A queue that keeps receiving requests within a few microseconds of its
// last completion (QD1 from a front-end that answers at once) so polls,
// and sleeps on its kick only once requests stop. An idle queue costs one
// window of spinning after its last request and nothing after: it sleeps
// on its kick, and nothing wakes it but the next kick. Bursts further apart
// than max (sporadic I/O) shrink the window to nothing within a few
// bursts, so such a queue spins at most max per request, and in the steady
// state not at all.
//
// How idle is measured: from the end of the drain that found the ring
// empty (its completions published, the driver signalled) to the moment
// the worker next sees a request, by polling or after its kick woke it.
// The latter includes the wake-up itself, which overstates idle by the
// few microseconds the window is meant to save; max leaves room for it.
var adaptivePoll = pollPolicy{
	start: 4 * time.Microsecond,
	// 50 µs is where `--poll-us 50` gave nvblk's lowest QD1 latency
	// (docs/PERFORMANCE.md); QEMU's iothreads default to 32 µs.
	max:    50 * time.Microsecond,
	grow:   2,
	shrink: 2,
}

// pollPolicy is how an adaptive poll window moves; see adaptivePoll.
type pollPolicy struct {
	start  time.Duration // the first window after none
	max    time.Duration // the longest window, and the longest idle worth polling for
	grow   int           // factor a window grows by
	shrink int           // divisor a window shrinks by
}

// next is the window to poll after an idle spell of idle, the window that
// preceded it having been cur.
func (p pollPolicy) next(cur, idle time.Duration) time.Duration {
	switch {
	case idle <= cur:
		return cur
	case idle > p.max:
		cur /= time.Duration(p.shrink)
		if cur < p.start {
			return 0
		}
		return cur
	case cur == 0:
		return min(p.start, p.max)
	default:
		return min(cur*time.Duration(p.grow), p.max)
	}
}

// pollWindow is one worker's busy-poll window: fixed (--poll-us N, or
// NeverPoll), or adapting to the idle spells it is told of. Owned by the
// worker goroutine.
type pollWindow struct {
	cur      time.Duration // the window to poll next; 0: sleep at once
	adaptive bool
}

// newPollWindow is the window Options.PollDuration d asks for.
func newPollWindow(d time.Duration) pollWindow {
	switch {
	case d == 0:
		return pollWindow{adaptive: true}
	case d < 0:
		return pollWindow{}
	}
	return pollWindow{cur: d}
}

// idled tells an adaptive window that the ring stayed empty for idle.
func (pw *pollWindow) idled(idle time.Duration) {
	if pw.adaptive {
		pw.cur = adaptivePoll.next(pw.cur, idle)
	}
}
