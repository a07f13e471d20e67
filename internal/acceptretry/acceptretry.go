// Package acceptretry paces an accept loop through a run of failed
// accepts. Running out of descriptors (EMFILE, ENFILE), a connection
// aborted before it was accepted (ECONNABORTED) or a short-lived lack of
// kernel memory must not end a server: it pauses, 5 ms doubling to 1 s as
// net/http does, and tries again, logging the run of failures at most every
// 10 s. The vhost-user server and serve's control socket both use it.
package acceptretry

import (
	"time"

	"github.com/sirupsen/logrus"
)

// Pauses between failed accepts, and how often their errors are logged.
const (
	minPause = 5 * time.Millisecond
	maxPause = time.Second
	logEvery = 10 * time.Second
)

// Retry paces and logs one accept loop's failures. The zero value is ready
// once Prefix is set; it belongs to one accept loop.
type Retry struct {
	Prefix string // of the log messages: the server's package, "vhost"

	pause    time.Duration // the last pause; zero after a success
	failures uint64        // in the current run
	lastLog  time.Time
	unlogged uint64 // failures since the last line
}

// Failed counts a failed accept, logs it unless a line went out less than
// 10 s ago, and returns how long to pause before the next.
func (r *Retry) Failed(log logrus.FieldLogger, err error) time.Duration {
	r.pause = min(max(2*r.pause, minPause), maxPause)
	r.failures++
	if now := time.Now(); now.Sub(r.lastLog) >= logEvery {
		log.WithError(err).WithField("failures", r.failures).WithField("unlogged", r.unlogged).
			WithField("retry_in", r.pause).Warn(r.Prefix + ": accept failed; retrying")
		r.lastLog, r.unlogged = now, 0
	} else {
		r.unlogged++
	}
	return r.pause
}

// Succeeded ends a run of failures, saying so if there was one.
func (r *Retry) Succeeded(log logrus.FieldLogger) {
	if r.failures != 0 {
		log.WithField("failures", r.failures).Info(r.Prefix + ": accepting again")
	}
	*r = Retry{Prefix: r.Prefix}
}
