package vhost

import (
	"time"

	"github.com/nvblk/nvblk/virtq"
)

// BadChainHandler is implemented by handlers that can answer a chain virtq
// refused as malformed (a loop, a buffer outside guest memory, a nested
// indirect table...). The chain holds the segments parsed before the fault.
// It returns the bytes it wrote, the used element's len. Handlers without it
// get their malformed chains completed with nothing written.
type BadChainHandler interface {
	HandleBadChain(c *virtq.Chain) uint32
}

// A hostile or broken guest can post malformed chains as fast as we pop
// them; each is worth a warning, but not a log line each.
const (
	badChainLogBurst  = 10 // lines per window per queue
	badChainLogWindow = time.Second
)

// badChainLog counts a queue's malformed chains and rate-limits their
// warnings. Owned by the worker goroutine.
type badChainLog struct {
	total      uint64 // malformed chains since the worker started
	windowEnd  time.Time
	logged     int    // lines in the current window
	suppressed uint64 // chains not logged since the last line
}

// note counts one malformed chain and says whether to log it, and how many
// went unlogged before it.
func (l *badChainLog) note(now time.Time) (log bool, suppressed uint64) {
	l.total++
	if now.After(l.windowEnd) {
		l.windowEnd, l.logged = now.Add(badChainLogWindow), 0
	}
	if l.logged >= badChainLogBurst {
		l.suppressed++
		return false, 0
	}
	l.logged++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// badChain completes a malformed chain: the handler may still put an error
// status into it, and the queue goes on.
func (w *worker) badChain(c *virtq.Chain, err error) {
	var n uint32
	if bh, ok := w.h.(BadChainHandler); ok {
		n = bh.HandleBadChain(c)
	}
	w.q.Push(c.Head, n)
	if log, suppressed := w.bad.note(time.Now()); log {
		e := w.log.WithError(err).WithField("malformed_chains", w.bad.total).WithField("written", n)
		if suppressed > 0 {
			e = e.WithField("unlogged", suppressed)
		}
		e.Warn("vhost: completed a malformed chain")
	}
}
