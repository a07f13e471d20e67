package vhost_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// The tests here shrink, with a real ftruncate, files the front-end shares
// with the back-end (guest memory, the inflight region) and then make the
// back-end touch the pages that are gone. The front-end's own mapping of
// those pages faults too: after the shrink, the test touches only memory
// that is still there.

// truncate shrinks fd to size bytes.
func truncate(t *testing.T, fd int, size uint64) {
	t.Helper()
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatalf("shrinking the front-end's file: %v", err)
	}
}

// errEventfd sets an error eventfd on ring i and returns it.
func errEventfd(t *testing.T, d *frontend.Device, i uint32) int {
	t.Helper()
	fd := eventfd(t)
	if err := d.Conn.SetVringFD(vhostuser.ReqSetVringErr, i, fd); err != nil {
		t.Fatal(err)
	}
	return fd
}

// waitSignalled waits for eventfd fd to be written.
func waitSignalled(t *testing.T, fd int, what string) {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for deadline := time.Now().Add(ioTimeout); time.Now().Before(deadline); {
		if n, err := unix.Poll(fds, 10); err == nil && n == 1 {
			return
		}
	}
	t.Fatalf("%s not signalled", what)
}

// readWrite writes a block through q and reads it back.
func readWrite(t *testing.T, q *frontend.Queue, sector uint64) {
	t.Helper()
	data := pattern(int64(sector), 4096)
	if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, ioTimeout); err != nil {
		t.Fatalf("queue %d write: %v", q.Index, err)
	}
	got := make([]byte, len(data))
	if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: got}, ioTimeout); err != nil {
		t.Fatalf("queue %d read: %v", q.Index, err)
	}
	if string(got) != string(data) {
		t.Fatalf("queue %d: sector %d reads back wrong", q.Index, sector)
	}
}

// faultLines counts the server's log lines about a fault in shared memory.
func faultLines(e *env) int {
	n := 0
	for _, l := range e.logs.AllEntries() {
		if err, ok := l.Data["error"].(error); ok && strings.Contains(err.Error(), "fault in shared memory") {
			n++
		}
	}
	return n
}

// servesNext checks that a new front-end gets a working device.
func servesNext(t *testing.T, e *env) {
	t.Helper()
	d, err := frontend.Connect(e.sock, frontend.Options{NumQueues: 2})
	if err != nil {
		t.Fatalf("next front-end: %v", err)
	}
	defer d.Close()
	readWrite(t, d.Queues[0], 200)
	readWrite(t, d.Queues[1], 208)
}

// TestGuestMemoryShrunkUnderARunningQueueEndsOnlyThatQueue: the front-end
// truncates the memfd behind guest memory while the queues run, and the
// back-end then touches the pages that went: in the used ring (the ring's
// own memory is gone) or in the handler's copy (a request's buffer is).
// The queue that touched them stops with DEVICE_NEEDS_RESET and its error
// eventfd signalled, logged once; the process lives, the other queue goes
// on serving, GET_VRING_BASE still answers, and the next front-end is
// served.
//
// Queue i lives in memory region i, region 2 holds the buffers the cases
// take away; the regions are consecutive in the one memfd, so shrinking it
// to region r's offset takes region r and those after it.
func TestGuestMemoryShrunkUnderARunningQueueEndsOnlyThatQueue(t *testing.T) {
	for _, tc := range []struct {
		name   string
		broken int // the queue that faults; the other must go on
		// run takes memory away with shrink (a region index) and makes
		// the broken queue touch it.
		run func(t *testing.T, d *frontend.Device, shrink func(region int))
	}{
		{"ring memory gone", 1, func(t *testing.T, d *frontend.Device, shrink func(int)) {
			shrink(1)
			// Only a kick: the ring is the front-end's memory too.
			d.Queues[1].Ring.ForceKick()
		}},
		{"read buffer gone", 0, func(t *testing.T, d *frontend.Device, shrink func(int)) {
			postVictim(t, d, virtio.BlkTIn, frontend.DescFWrite)
			shrink(2)
			d.Queues[0].Ring.ForceKick()
		}},
		{"write buffer gone", 0, func(t *testing.T, d *frontend.Device, shrink func(int)) {
			postVictim(t, d, virtio.BlkTOut, 0)
			shrink(2)
			d.Queues[0].Ring.ForceKick()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOpts{queues: 2})
			d, err := frontend.Connect(e.sock, frontend.Options{NumQueues: 2, QueueSize: 16, MaxIO: 16 << 10,
				Regions: 3, MemSize: 3 * 2 << 20, RegionPerQueue: true})
			if err != nil {
				t.Fatal(err)
			}
			errFD := errEventfd(t, d, uint32(tc.broken))
			readWrite(t, d.Queues[0], 0)
			readWrite(t, d.Queues[1], 8)

			tc.run(t, d, func(region int) { truncate(t, d.Mem.FD(), d.Mem.Regions[region].Offset) })
			waitNeedsReset(t, d)
			waitSignalled(t, errFD, "the broken queue's error eventfd")
			readWrite(t, d.Queues[1-tc.broken], 16)
			if err := d.Close(); err != nil { // GET_VRING_BASE on both rings
				t.Fatalf("stopping the rings: %v", err)
			}
			if n := faultLines(e); n != 1 {
				t.Errorf("%d log lines about the fault, want 1", n)
			}
			servesNext(t, e)
		})
	}
}

// postVictim posts on queue 0, without a kick, a request of type typ whose
// 4 KiB data buffer (flags dataFlags) lies in region 2; header and status
// are in queue 0's region.
func postVictim(t *testing.T, d *frontend.Device, typ uint32, dataFlags uint16) {
	t.Helper()
	hdr, hb, err := d.Mem.AllocIn(0, 16, 16)
	if err != nil {
		t.Fatal(err)
	}
	hb[0] = byte(typ)
	status, _, err := d.Mem.AllocIn(0, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	data, _, err := d.Mem.AllocIn(2, 4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	r := d.Queues[0].Ring
	r.WriteDesc(0, hdr, 16, frontend.DescFNext, 1)
	r.WriteDesc(1, data, 4096, dataFlags|frontend.DescFNext, 2)
	r.WriteDesc(2, status, 1, frontend.DescFWrite, 0)
	r.PushAvail(0)
}

// TestInflightFDFromTheBackendCannotBeShrunk: the memfd GET_INFLIGHT_FD
// returns is sealed against shrinking (and against further seals), so a
// front-end cannot make the back-end's inflight records fault.
func TestInflightFDFromTheBackendCannotBeShrunk(t *testing.T) {
	e := startEnv(t, envOpts{queues: 2})
	d := connect(t, e, frontend.Options{NumQueues: 2, Inflight: true})
	if d.InflightFD < 0 {
		t.Fatal("no inflight region negotiated")
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.InflightFD, &st); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{0, st.Size - 1} {
		if err := unix.Ftruncate(d.InflightFD, size); !errors.Is(err, unix.EPERM) {
			if err == nil {
				unix.Ftruncate(d.InflightFD, st.Size) // growing back is allowed
			}
			t.Fatalf("shrinking the inflight memfd from %d to %d bytes: %v, want EPERM", st.Size, size, err)
		}
	}
	seals, err := unix.FcntlInt(uintptr(d.InflightFD), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL; seals&want != want {
		t.Errorf("seals %#x, want at least %#x", seals, want)
	}
	readWrite(t, d.Queues[1], 0)
}

// frontendInflight makes an inflight region of the front-end's own for
// queues of size entries, unsealed as any front-end's memfd may be, and
// returns its description and fd (closed when the test ends).
func frontendInflight(t *testing.T, queues, size uint16) (vhostuser.Inflight, int) {
	t.Helper()
	fd, err := unix.MemfdCreate("test-inflight", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// 16 bytes of header and 16 per entry, rounded up to 64: the layout
	// inflight.go gives (and inflight_test.go pins).
	per := (16 + 16*uint64(size) + 63) &^ 63
	inf := vhostuser.Inflight{MmapSize: uint64(queues) * per, NumQueues: queues, QueueSize: size}
	if err := unix.Ftruncate(fd, int64(inf.MmapSize)); err != nil {
		t.Fatal(err)
	}
	return inf, fd
}

// TestInflightRegionShrunkUnderARunningQueueEndsOnlyThatQueue: a front-end
// hands over (SET_INFLIGHT_FD) an inflight region of its own, unsealed,
// and truncates it while the queues run. Queue 1's records for the head it
// takes next are gone: recording the request faults, and only that queue
// stops (DEVICE_NEEDS_RESET); queue 0, whose records are still there, goes
// on, and the next front-end is served.
func TestInflightRegionShrunkUnderARunningQueueEndsOnlyThatQueue(t *testing.T) {
	e := startEnv(t, envOpts{queues: 2})
	// 256 entries: queue 0's records are bytes [0, 4160), queue 1's
	// [4160, 8320), its entry h at 4176+16h.
	d, err := frontend.Connect(e.sock, frontend.Options{NumQueues: 2, QueueSize: 256, MaxIO: 4096, Inflight: true})
	if err != nil {
		t.Fatal(err)
	}
	inf, fd := frontendInflight(t, 2, 256)
	if err := d.Conn.SetInflightFD(inf, fd); err != nil {
		t.Fatal(err)
	}
	readWrite(t, d.Queues[0], 0)
	readWrite(t, d.Queues[1], 8)

	const kept = 8192 // queue 0's records, and queue 1's up to entry 250
	truncate(t, fd, kept)
	r := &frontend.Request{Type: virtio.BlkTIn, Sector: 0, Data: make([]byte, 4096)}
	if err := d.Queues[1].Submit(r); err != nil {
		t.Fatal(err)
	}
	if off := 4176 + 16*int(r.Head()); off < kept {
		t.Fatalf("request at head %d, whose record (byte %d) survives the shrink", r.Head(), off)
	}
	d.Queues[1].Kick()
	waitNeedsReset(t, d)
	readWrite(t, d.Queues[0], 16)
	if err := d.Close(); err != nil {
		t.Fatalf("stopping the rings: %v", err)
	}
	if n := faultLines(e); n != 1 {
		t.Errorf("%d log lines about the fault, want 1", n)
	}
	servesNext(t, e)
}

// TestSharedMemoryShrunkBeforeARingStartsDropsTheConnection: the shrink
// comes before a ring starts, so it is the session that touches the pages
// that went, starting the ring on SET_VRING_ENABLE (reading the used index
// in guest memory, or recovering the queue's inflight records). That
// connection is dropped; the process lives and the next front-end is
// served.
func TestSharedMemoryShrunkBeforeARingStartsDropsTheConnection(t *testing.T) {
	for _, tc := range []struct {
		name   string
		shrink func(t *testing.T, d *frontend.Device)
	}{
		{"guest memory", func(t *testing.T, d *frontend.Device) {
			truncate(t, d.Mem.FD(), 0)
		}},
		{"inflight region", func(t *testing.T, d *frontend.Device) {
			inf, fd := frontendInflight(t, 1, 64)
			if err := d.Conn.SetInflightFD(inf, fd); err != nil {
				t.Fatal(err)
			}
			truncate(t, fd, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOpts{queues: 1})
			d := connect(t, e, frontend.Options{NoEnable: true, Inflight: true})
			tc.shrink(t, d)
			err := d.Conn.SetVringState(vhostuser.ReqSetVringEnable, 0, 1)
			if err == nil || errors.Is(err, frontend.ErrNack) {
				t.Fatalf("SET_VRING_ENABLE on shrunk memory: %v; want the connection dropped", err)
			}
			if n := faultLines(e); n != 1 {
				t.Errorf("%d log lines about the fault, want 1", n)
			}
			d2, err := frontend.Connect(e.sock, frontend.Options{})
			if err != nil {
				t.Fatalf("next front-end: %v", err)
			}
			defer d2.Close()
			readWrite(t, d2.Queues[0], 0)
		})
	}
}
