package vhost_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
	"golang.org/x/sys/unix"
)

// packedInflightIDs reads queue 0 of an inflight region as vhost-user.rst
// lays out QueueRegionPacked (a 32-byte header with free_head at 12,
// used_idx at 16; 32-byte DescStatePacked entries: inflight at 0, next at
// 2, last at 4, counter at 8, id at 16), independently of the back-end's
// code: the buffer IDs of the chains in flight, in counter order.
func packedInflightIDs(t *testing.T, inf vhostuser.Inflight, fd int) []uint16 {
	t.Helper()
	b, err := unix.Mmap(fd, int64(inf.MmapOffset), int(inf.MmapSize), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	n := inf.QueueSize
	if v, dn := binary.LittleEndian.Uint16(b[8:]), binary.LittleEndian.Uint16(b[10:]); v != 1 || dn != n {
		t.Fatalf("region version %d desc_num %d, want 1 and %d", v, dn, n)
	}
	entry := func(e uint16) []byte { return b[32+32*int(e):] }
	free := map[uint16]bool{}
	for e := binary.LittleEndian.Uint16(b[12:]); e < n && !free[e]; e = binary.LittleEndian.Uint16(entry(e)[2:]) {
		free[e] = true
	}
	type chain struct {
		counter uint64
		id      uint16
	}
	var chains []chain
	for e := range n {
		if d := entry(e); d[0] == 1 && !free[e] {
			last := binary.LittleEndian.Uint16(d[4:])
			chains = append(chains, chain{binary.LittleEndian.Uint64(d[8:]), binary.LittleEndian.Uint16(entry(last)[16:])})
		}
	}
	sort.Slice(chains, func(i, j int) bool { return chains[i].counter < chains[j].counter })
	var ids []uint16
	for _, c := range chains {
		ids = append(ids, c.id)
	}
	return ids
}

// writeReadLaps writes and reads back n 4 KiB blocks through q, kicking
// each one alone, so that a ring of fewer descriptors goes round many
// times.
func writeReadLaps(t *testing.T, e *env, q *frontend.Queue, n int, seed int64) {
	t.Helper()
	for i := range n {
		data := pattern(seed+int64(i), 4096)
		sector := uint64(8 * (i % 64))
		if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, ioTimeout); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		got := make([]byte, len(data))
		if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: got}, ioTimeout); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(got, data) || !bytes.Equal(e.disk.bytes(int(sector)*512, 4096), data) {
			t.Fatalf("block %d read back differs from what was written", i)
		}
	}
}

func TestPackedRingServesVerifiedIOOverManyLaps(t *testing.T) {
	for _, o := range []struct {
		name string
		o    frontend.Options
		poll time.Duration
	}{
		{"plain", frontend.Options{Packed: true, QueueSize: 8}, 0},
		{"indirect", frontend.Options{Packed: true, QueueSize: 8, Indirect: true}, 0},
		{"eventidx+segments", frontend.Options{Packed: true, QueueSize: 16, EventIdx: true, SegSize: 1000}, 0},
		{"eventidx+indirect+poll", frontend.Options{Packed: true, QueueSize: 8, EventIdx: true, Indirect: true}, 50 * time.Microsecond},
	} {
		t.Run(o.name, func(t *testing.T) {
			e := startEnv(t, envOpts{poll: o.poll})
			d := connect(t, e, o.o)
			if d.Features&virtio.FRingPacked == 0 || !d.Queues[0].Ring.Packed() {
				t.Fatalf("features %#x: packed ring not negotiated", d.Features)
			}
			writeReadLaps(t, e, d.Queues[0], 40, 1)
		})
	}
}

func TestPackedRingIsNotUsedUnlessTheFrontEndAsks(t *testing.T) {
	e := startEnv(t, envOpts{})
	d := connect(t, e, frontend.Options{})
	if d.Features&virtio.FRingPacked != 0 || d.Queues[0].Ring.Packed() {
		t.Fatalf("features %#x: packed ring negotiated without asking", d.Features)
	}
}

func TestPackedRingBatchOfRequestsCompletesWhole(t *testing.T) {
	e := startEnv(t, envOpts{})
	d := connect(t, e, frontend.Options{Packed: true, QueueSize: 32, EventIdx: true})
	q := d.Queues[0]
	for round := range 4 {
		var reqs []*frontend.Request
		for i := range 10 {
			reqs = append(reqs, &frontend.Request{Type: virtio.BlkTOut, Sector: uint64(8 * i), Data: pattern(int64(10*round+i), 4096)})
		}
		if err := q.SubmitAll(reqs); err != nil {
			t.Fatal(err)
		}
		q.Kick()
		for q.Inflight() > 0 {
			if _, err := q.Wait(ioTimeout); err != nil {
				t.Fatalf("round %d: %v with %d outstanding", round, err, q.Inflight())
			}
		}
		for i, r := range reqs {
			if r.Status != virtio.BlkSOK || !bytes.Equal(e.disk.bytes(8*i*512, 4096), r.Data) {
				t.Fatalf("round %d write %d: status %d, data on disk %v", round, i, r.Status, bytes.Equal(e.disk.bytes(8*i*512, 4096), r.Data))
			}
		}
	}
}

// GET_VRING_BASE of a packed ring carries both positions with their wrap
// counters (avail in bits 0-15, used in 16-31), and a ring restarted from
// them goes on where it stopped.
func TestPackedRingRestartsFromGetVringBase(t *testing.T) {
	e := startEnv(t, envOpts{})
	d := connect(t, e, frontend.Options{Packed: true, QueueSize: 8})
	q := d.Queues[0]
	writeReadLaps(t, e, q, 5, 7) // 10 requests of 3 descriptors on 8: lap 4, wrap 1
	bases, err := d.Stop()
	if err != nil {
		t.Fatal(err)
	}
	// 30 descriptors: index 6 of the fourth lap, whose wrap counter is 0.
	if want := uint32(6 | 6<<16); bases[0] != want {
		t.Fatalf("GET_VRING_BASE %#x, want %#x", bases[0], want)
	}
	if err := d.SendRing(q, bases[0]); err != nil {
		t.Fatal(err)
	}
	if err := d.Conn.SetVringState(vhostuser.ReqSetVringEnable, 0, 1); err != nil {
		t.Fatal(err)
	}
	writeReadLaps(t, e, q, 5, 70)
}

// A back-end takes four writes off a packed ring and is killed; the next
// one, handed the inflight region, resubmits them from the descriptors
// recorded there, in the order taken, then serves the rest.
func TestPackedInflightWritesTakenByAKilledBackendAreResubmittedByTheNext(t *testing.T) {
	fdcheck.Check(t)
	sock := filepath.Join(t.TempDir(), "stalling.sock")
	helper, lines := startStallingBackend(t, sock)

	d, err := frontend.Connect(sock, frontend.Options{Inflight: true, QueueSize: 16, Indirect: true, Packed: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if d.InflightFD < 0 || !d.Queues[0].Ring.Packed() {
		t.Fatalf("no inflight region (%+v) or no packed ring", d.Inflight)
	}
	q := d.Queues[0]
	var reqs []*frontend.Request
	for i := range 8 {
		reqs = append(reqs, &frontend.Request{Type: virtio.BlkTOut, Sector: uint64(8 * i), Data: pattern(int64(200+i), 4096)})
	}
	if err := q.SubmitAll(reqs); err != nil {
		t.Fatal(err)
	}
	taken := []uint16{reqs[0].Head(), reqs[1].Head(), reqs[2].Head(), reqs[3].Head()}
	q.Kick()
	if l := waitLine(t, lines); l != "stalled" {
		t.Fatalf("stalling back-end: %q", l)
	}
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	if done, _ := q.Reap(); len(done) != 0 {
		t.Fatalf("%d requests completed by a back-end that published nothing", len(done))
	}
	if ids := packedInflightIDs(t, d.Inflight, d.InflightFD); fmt.Sprint(ids) != fmt.Sprint(taken) {
		t.Fatalf("after the kill the region has %v in flight, want %v", ids, taken)
	}

	e := startEnv(t, envOpts{queues: 1})
	if err := d.Resume(e.sock); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(ioTimeout)
	var order []uint16
	for q.Inflight() > 0 {
		done, err := q.Wait(time.Until(deadline))
		if err != nil {
			t.Fatalf("%v with %d requests outstanding", err, q.Inflight())
		}
		for _, r := range done {
			order = append(order, r.Head())
		}
	}
	for i, r := range reqs {
		if !r.Done || r.Status != virtio.BlkSOK {
			t.Errorf("write %d: done %v status %d", i, r.Done, r.Status)
		}
		if got := e.disk.bytes(8*i*512, 4096); !bytes.Equal(got, r.Data) {
			t.Errorf("write %d (sector %d) is not on the new back-end's disk", i, r.Sector)
		}
	}
	if fmt.Sprint(order[:4]) != fmt.Sprint(taken) {
		t.Errorf("completion order %v: the resubmitted %v should come first, in the order taken", order, taken)
	}
	if ids := packedInflightIDs(t, d.Inflight, d.InflightFD); len(ids) != 0 {
		t.Errorf("after the new back-end: %v still in flight", ids)
	}
	// And the ring goes on.
	writeReadLaps(t, e, q, 6, 300)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}
