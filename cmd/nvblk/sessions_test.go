package main

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// Two front-ends on one serve, as a guest migrating between two QEMUs on
// this host makes: status lists both, and detach --session drops one
// while the other goes on.
func TestStatusListsEveryFrontEndAndDetachSessionDropsOne(t *testing.T) {
	img := formatted(t)
	dir := t.TempDir()
	sock, ctl := filepath.Join(dir, "nvblk.sock"), filepath.Join(dir, "nvblk.ctl")
	servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--control-socket", ctl, "--log-level", "error")
	a, b := connect(t, sock), connect(t, sock)
	write(t, a, 0, make([]byte, 4096))
	write(t, b, 8, make([]byte, 4096))

	code, out, stderr := nvblk(t, nil, "status", "--control-socket", ctl, "--json")
	var st control.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Sessions) != 2 {
		t.Fatalf("status: exit %d, %d sessions: %s%s", code, len(st.Sessions), out, stderr)
	}
	for _, ss := range st.Sessions {
		if !ss.Ready || !ss.PeerKnown || ss.Logging {
			t.Errorf("session %+v: want ready, its peer known, no dirty log", ss)
		}
	}
	if code, text, _ := nvblk(t, nil, "status", "--control-socket", ctl); code != 0 || strings.Count(text, "front-end ") < 2 {
		t.Errorf("status text names %d front-ends:\n%s", strings.Count(text, "front-end "), text)
	}
	if r, err := control.Do(ctl, control.Request{Cmd: "stats"}, time.Second); err != nil || r.Stats == nil || r.Stats.Sessions != 2 {
		t.Fatalf("stats with two front-ends: %v, %+v", err, r)
	}
	first := strconv.FormatUint(st.Sessions[0].ID, 10)
	if code, text, stderr := nvblk(t, nil, "detach", "--control-socket", ctl, "--session", first); code != 0 || !strings.Contains(text, "detached") {
		t.Fatalf("detach --session %s: exit %d: %s%s", first, code, text, stderr)
	}
	// The oldest, a, is gone; b is served on.
	if err := a.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 0, Data: make([]byte, 4096)}, time.Second); err == nil {
		t.Error("the detached front-end is still served")
	}
	write(t, b, 16, make([]byte, 4096))
	if code, text, _ := nvblk(t, nil, "detach", "--control-socket", ctl, "--session", "999"); code != 0 || !strings.Contains(text, "no vhost-user front-end") {
		t.Errorf("detach of an unknown session: exit %d: %s", code, text)
	}
}
