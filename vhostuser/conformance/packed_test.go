package conformance_test

import (
	"encoding/binary"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/conformance"
	"github.com/nvblk/nvblk/virtio"
)

// packedCaseNames are the packed/ cases Cases declares.
func packedCaseNames(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, c := range conformance.Cases() {
		if strings.HasPrefix(c.Name, "packed/") {
			out = append(out, c.Name)
		}
	}
	if len(out) < 4 {
		t.Fatalf("%d packed cases declared: %v", len(out), out)
	}
	return out
}

// The packed-ring cases against nvblk in-process, which offers
// VIRTIO_F_RING_PACKED: each row is a back-end and a run, and the verdict
// (and a word of the detail) every packed case must get there; a case a
// row does not name must pass.
func TestThePackedRingCasesAgainstNvblk(t *testing.T) {
	laps := regexp.MustCompile(`(\d+) laps of a 16-descriptor ring`)
	rows := []struct {
		name        string
		server      serverOpts
		destructive bool
		hidePacked  bool // a proxy takes VIRTIO_F_RING_PACKED out of GET_FEATURES
		want        map[string]conformance.Verdict
		detail      map[string]string // the detail contains this
		minLaps     int
	}{
		{name: "destructive-4096-byte-sectors", server: serverOpts{queues: 2, lbaSize: 4096}, destructive: true,
			detail: map[string]string{"packed/restart-from-base": "base 0x1c001c"}, minLaps: 100},
		{name: "destructive-512-byte-sectors", server: serverOpts{queues: 1, lbaSize: 512}, destructive: true, minLaps: 100},
		{name: "without-destructive-reads-only", server: serverOpts{queues: 2},
			want: map[string]conformance.Verdict{"packed/write-read": conformance.Skip}, detail: map[string]string{"packed/write-read": "--destructive"},
			minLaps: 50},
		{name: "read-only-device", server: serverOpts{readOnly: true}, destructive: true,
			want: map[string]conformance.Verdict{"packed/write-read": conformance.Skip}, detail: map[string]string{"packed/write-read": "read-only"},
			minLaps: 50},
		{name: "packed-not-offered", server: serverOpts{queues: 2}, destructive: true, hidePacked: true},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			sock, _ := startNvblk(t, row.server)
			if row.hidePacked {
				sock = hidePackedRing(t, sock)
			}
			rep := run(t, sock, conformance.Options{Destructive: row.destructive})
			if got := rep.Features&virtio.FRingPacked != 0; got == row.hidePacked {
				t.Fatalf("features offered %#x: VIRTIO_F_RING_PACKED %v, want %v", rep.Features, got, !row.hidePacked)
			}
			results := map[string]conformance.Result{}
			for _, r := range rep.Results {
				results[r.Name] = r
			}
			for _, name := range packedCaseNames(t) {
				r, ok := results[name]
				want, detail := conformance.Pass, row.detail[name]
				if w, ok := row.want[name]; ok {
					want = w
				}
				if row.hidePacked {
					want, detail = conformance.Skip, "not offered: VIRTIO_F_RING_PACKED"
				}
				switch {
				case !ok:
					t.Errorf("%s: not reported", name)
				case r.Verdict != want || !strings.Contains(r.Detail, detail):
					t.Errorf("%s: %s: %s; want %s with %q", name, r.Verdict, r.Detail, want, detail)
				}
			}
			if row.minLaps > 0 {
				m := laps.FindStringSubmatch(results["packed/multi-lap"].Detail)
				if n, _ := strconv.Atoi(append(m, "", "")[1]); n < row.minLaps {
					t.Errorf("packed/multi-lap: %q, want at least %d laps", results["packed/multi-lap"].Detail, row.minLaps)
				}
			}
			// The split-ring cases are unaffected by the packed ones.
			for _, f := range rep.Failed() {
				t.Errorf("%s: fail: %s", f.Name, f.Detail)
			}
		})
	}
}

// hidePackedRing serves a socket that relays every vhost-user message
// (and its descriptors) between a front-end and the back-end on sock,
// clearing VIRTIO_F_RING_PACKED in the back-end's GET_FEATURES replies:
// the back-end as a front-end sees it is one that does not offer packed
// rings.
func hidePackedRing(t *testing.T, sock string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "no-packed.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			front, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			back, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				front.Close()
				continue
			}
			relay := func(from, to *net.UnixConn, patch bool) {
				defer from.Close()
				defer to.Close()
				for {
					hdr, payload, fds, err := vhostuser.ReadMessage(from)
					if err != nil {
						return
					}
					if patch && hdr.Request == vhostuser.ReqGetFeatures && hdr.Flags&vhostuser.FlagReply != 0 && len(payload) == 8 {
						binary.LittleEndian.PutUint64(payload, binary.LittleEndian.Uint64(payload)&^virtio.FRingPacked)
					}
					err = vhostuser.WriteMessage(to, vhostuser.EncodeMessage(hdr.Request, hdr.Flags, payload), fds)
					vhostuser.CloseFDs(fds)
					if err != nil {
						return
					}
				}
			}
			go relay(front, back, false)
			go relay(back, front, true)
		}
	}()
	return path
}
