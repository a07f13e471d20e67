// Package reconnect restarts `nvblk serve` under a running guest's I/O:
// QEMU's vhost-user-blk reconnects to the same socket (chardev
// reconnect=1), hands the new back-end the inflight region the old one
// kept (SET_INFLIGHT_FD), and the new back-end resubmits what the old one
// had taken and not completed. The guest must never see an I/O error, and
// every write it saw acknowledged must be on the image.
package reconnect

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "nvblk-reconnect-")) }

// serve starts generation gen of the back-end and returns once it listens.
// A test runs several, one after the other, on the same socket and image.
func serve(t *testing.T, gen int, sock string, img guest.Image) *guest.Backend {
	t.Helper()
	// Debug logs every vhost-user request: the reconnect handshake
	// (GET/SET_INFLIGHT_FD, SET_VRING_BASE) is in the log of a failure.
	// Sync durability makes each write msync every BTT step, so the
	// back-end holds each request long enough for a kill to catch some
	// in flight.
	return suite.Serve(t, fmt.Sprintf("nvblk serve #%d", gen), sock, img.Path,
		"--durability", "sync", "--log-level", "debug")
}

// resubmittedBy is how many requests the back-end resubmitted from the
// inflight region it was handed.
func resubmittedBy(b *guest.Backend) int {
	n := 0
	for _, line := range strings.Split(b.Output(), "\n") {
		if !strings.Contains(line, "resubmitted in-flight requests") {
			continue
		}
		if _, v, ok := strings.Cut(line, "requests="); ok {
			k, _ := strconv.Atoi(strings.Fields(v)[0])
			n += k
		}
	}
	return n
}

// resumed is the back-end's account of each queue it resumed from an
// inflight region: requests resubmitted, used index, QEMU's base.
func resumed(b *guest.Backend) []string {
	var out []string
	for _, line := range strings.Split(b.Output(), "\n") {
		if i := strings.Index(line, "resuming queue from the inflight region"); i >= 0 {
			out = append(out, strings.TrimSpace(line[i:]))
		}
	}
	return out
}
