// Package reconnect restarts `nvblk serve` under a running guest's I/O:
// QEMU's vhost-user-blk reconnects to the same socket (chardev
// reconnect=1), hands the new back-end the inflight region the old one
// kept (SET_INFLIGHT_FD), and the new back-end resubmits what the old one
// had taken and not completed. The guest must never see an I/O error, and
// every write it saw acknowledged must be on the image.
package reconnect

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "nvblk-reconnect-")) }

// queues is the request virtqueues of the device, and the guest's vCPUs:
// the guest's virtio_blk maps CPU i to queue i, and the writers are pinned
// so that both carry writes when the back-end dies.
const queues = 2

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
		"--num-queues", strconv.Itoa(queues), "--durability", "sync", "--log-level", "debug")
}

// The back-end's log lines (vhost/inflight.go) that account for a restart.
const (
	msgResuming    = "vhost: resuming queue from the inflight region"
	msgResubmitted = "vhost: resubmitted in-flight requests"
)

// resume is one queue a back-end resumed from the inflight region it was
// handed: the heads it found in flight, the used index in the ring, the
// base QEMU sent (SET_VRING_BASE) and where it resumed the avail ring.
type resume struct {
	backend                                        string
	queue, resubmit, usedIdx, vringBase, lastAvail int
}

func (r resume) String() string {
	return fmt.Sprintf("%s: queue %d resumed at avail %d (used %d, QEMU's base %d) with %d in flight",
		r.backend, r.queue, r.lastAvail, r.usedIdx, r.vringBase, r.resubmit)
}

// restartLog is what a back-end's log says about the inflight region it
// took over: each queue it resumed, and how many requests each queue's
// worker then resubmitted (and logged done).
type restartLog struct {
	resumes     []resume
	resubmitted map[int]int // queue -> requests
}

// readRestartLog parses b's log. A line with one of the messages but not
// the fields this test reads is an error: the test must not pass because
// the log changed shape.
func readRestartLog(b *guest.Backend) (restartLog, error) {
	out := restartLog{resubmitted: map[int]int{}}
	for _, line := range strings.Split(b.Output(), "\n") {
		f := logFields(line)
		switch f["msg"] {
		case msgResuming:
			v, err := intFields(f, "queue", "resubmit", "used_idx", "vring_base", "last_avail")
			if err != nil {
				return out, fmt.Errorf("%s: %v in %q", b.Name, err, line)
			}
			out.resumes = append(out.resumes, resume{b.Name, v[0], v[1], v[2], v[3], v[4]})
		case msgResubmitted:
			v, err := intFields(f, "queue", "requests")
			if err != nil {
				return out, fmt.Errorf("%s: %v in %q", b.Name, err, line)
			}
			out.resubmitted[v[0]] += v[1]
		}
	}
	return out, nil
}

// logFields parses a logrus text line: key=value pairs separated by
// spaces, a value quoted (Go syntax) when it needs to be. A line that is
// not one, such as what serve prints for the operator, gives nil.
func logFields(line string) map[string]string {
	out := map[string]string{}
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimLeft(s, " ") {
		k, rest, ok := strings.Cut(s, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \"") {
			return nil
		}
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return nil
			}
			out[k], _ = strconv.Unquote(q)
			s = rest[len(q):]
		} else {
			out[k], s, _ = strings.Cut(rest, " ")
		}
	}
	return out
}

// intFields is the named fields of f as integers.
func intFields(f map[string]string, keys ...string) ([]int, error) {
	out := make([]int, len(keys))
	for i, k := range keys {
		v, ok := f[k]
		if !ok {
			return nil, fmt.Errorf("no field %s", k)
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("field %s: %v", k, err)
		}
		out[i] = n
	}
	return out, nil
}

// inflightMemfd names the memfd nvblk creates for GET_INFLIGHT_FD; QEMU
// holds it across back-ends (/proc/QEMU/fd/N -> "/memfd:nvblk-inflight
// (deleted)") and hands it to each new one.
const inflightMemfd = "/memfd:nvblk-inflight"

// inflightHeads reads the inflight region QEMU (process qemuPid) keeps
// for the device and returns, per queue, how many descriptor heads it
// marks taken and not completed: what a back-end frozen or killed now
// leaves the next one to resubmit. The layout is the spec's (QEMU
// docs/interop/vhost-user.rst, "Inflight I/O tracking", QueueRegionSplit),
// read independently of vhost/inflight.go: n equal queue regions, each a
// header (u64 features, u16 version, u16 desc_num, u16 last_batch_head,
// u16 used_idx) and desc_num 16-byte DescStateSplit entries whose first
// byte is inflight.
func inflightHeads(qemuPid, n int) ([]int, error) {
	return countInflight(qemuPid, n, inflightLayout{name: "split", header: 16, entry: 16})
}

// inflightLayout is how a queue's region is laid out: a header of header
// bytes, then desc_num entries of entry bytes whose first byte is
// inflight; version and desc_num are the u16s at bytes 8 and 10 of the
// header in both of the spec's layouts.
type inflightLayout struct {
	name          string
	header, entry int
}

// countInflight finds the inflight memfd QEMU (process qemuPid) holds,
// shares it out equally among n queues and counts, per queue, the entries
// of layout l marked in flight.
func countInflight(qemuPid, n int, l inflightLayout) ([]int, error) {
	dir := fmt.Sprintf("/proc/%d/fd", qemuPid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var region []byte
	for _, fd := range fds {
		if target, err := os.Readlink(dir + "/" + fd.Name()); err != nil || !strings.HasPrefix(target, inflightMemfd) {
			continue
		}
		if region != nil {
			return nil, fmt.Errorf("QEMU holds more than one %s", inflightMemfd)
		}
		if region, err = os.ReadFile(dir + "/" + fd.Name()); err != nil {
			return nil, err
		}
	}
	if region == nil {
		return nil, fmt.Errorf("QEMU holds no %s: no inflight region to reconnect with", inflightMemfd)
	}
	if len(region) == 0 || len(region)%n != 0 {
		return nil, fmt.Errorf("inflight region of %d bytes for %d queues", len(region), n)
	}
	per := len(region) / n
	out := make([]int, n)
	for q := range n {
		b := region[q*per : (q+1)*per]
		version, descNum := binary.NativeEndian.Uint16(b[8:]), int(binary.NativeEndian.Uint16(b[10:]))
		if version != 1 || l.header+l.entry*descNum > per {
			return nil, fmt.Errorf("queue %d's %s inflight region: version %d, %d descriptors in %d bytes", q, l.name, version, descNum, per)
		}
		for e := range descNum {
			if b[l.header+l.entry*e] != 0 {
				out[q]++
			}
		}
	}
	return out, nil
}
