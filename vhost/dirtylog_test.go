package vhost_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// pagesOf returns the log pages of guest range [gpa, gpa+n).
func pagesOf(gpa, n uint64) []uint64 {
	var out []uint64
	for p := gpa / vhostuser.LogPageSize; p <= (gpa+n-1)/vhostuser.LogPageSize; p++ {
		out = append(out, p)
	}
	return out
}

// usedRingPages are the pages of q's used ring (flags, idx, elements,
// avail_event).
func usedRingPages(q *frontend.Queue) []uint64 {
	return pagesOf(q.Ring.UsedAddr, 6+8*uint64(q.Ring.Size))
}

// wantMarked fails unless every page of want is marked in l.
func wantMarked(t *testing.T, l *frontend.DirtyLog, what string, want []uint64) {
	t.Helper()
	for _, p := range want {
		if !l.Dirty(p * vhostuser.LogPageSize) {
			t.Errorf("%s: page %d (guest %#x) not marked; marked: %v", what, p, p*vhostuser.LogPageSize, l.DirtyPages())
		}
	}
}

// wantOnlyWithin fails if l marks a page outside allowed.
func wantOnlyWithin(t *testing.T, l *frontend.DirtyLog, allowed ...[]uint64) {
	t.Helper()
	ok := map[uint64]bool{}
	for _, ps := range allowed {
		for _, p := range ps {
			ok[p] = true
		}
	}
	for _, p := range l.DirtyPages() {
		if !ok[p] {
			t.Errorf("page %d (guest %#x) marked, which the device did not write", p, p*vhostuser.LogPageSize)
		}
	}
}

// setLogBase gives d the log l, which nvblk must accept: reply 0.
func setLogBase(t *testing.T, d *frontend.Device, l *frontend.DirtyLog) {
	t.Helper()
	if reply, err := d.SetLogBase(l, vhostuser.Log{MmapSize: l.Size}); err != nil || reply != 0 {
		t.Fatalf("SET_LOG_BASE: reply %d, %v; want 0", reply, err)
	}
}

// loggingDevice connects a front-end that negotiated LOG_SHMFD and starts
// logging as QEMU does when a migration starts, then clears the log:
// restarting the rings on the new features writes their used rings.
func loggingDevice(t *testing.T, e *env) (*frontend.Device, *frontend.DirtyLog) {
	t.Helper()
	d := connect(t, e, frontend.Options{DirtyLog: true, EventIdx: true})
	if d.Protocol&vhostuser.ProtoLogSHMFD == 0 {
		t.Fatal("LOG_SHMFD not negotiated")
	}
	l, err := d.StartLogging()
	if err != nil {
		t.Fatal(err)
	}
	l.Clear()
	return d, l
}

func TestDirtyLogReadMarksDataStatusAndUsedRing(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	data := pattern(3, 16<<10)
	copy(e.disk.data[8*512:], data)
	d, l := loggingDevice(t, e)
	q := d.Queues[0]
	r := &frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: make([]byte, len(data))}
	if err := q.Do(r, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Data, data) {
		t.Fatal("read returned other data")
	}
	wantMarked(t, l, "IN data", pagesOf(r.DataAddr, uint64(len(data))))
	wantMarked(t, l, "status byte", pagesOf(r.StatusAddr, 1))
	wantMarked(t, l, "used ring", usedRingPages(q))
	wantOnlyWithin(t, l, pagesOf(r.DataAddr, uint64(len(data))), pagesOf(r.StatusAddr, 1), usedRingPages(q))
}

func TestDirtyLogWriteMarksStatusButNotTheDataItRead(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d, l := loggingDevice(t, e)
	q := d.Queues[0]
	r := &frontend.Request{Type: virtio.BlkTOut, Sector: 8, Data: pattern(4, 16<<10)}
	if err := q.Do(r, ioTimeout); err != nil {
		t.Fatal(err)
	}
	wantMarked(t, l, "status byte", pagesOf(r.StatusAddr, 1))
	wantMarked(t, l, "used ring", usedRingPages(q))
	wantOnlyWithin(t, l, pagesOf(r.StatusAddr, 1), usedRingPages(q))
}

func TestDirtyLogGetIDMarksItsBuffer(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d, l := loggingDevice(t, e)
	r := &frontend.Request{Type: virtio.BlkTGetID, Data: make([]byte, virtio.BlkIDBytes)}
	if err := d.Queues[0].Do(r, ioTimeout); err != nil {
		t.Fatal(err)
	}
	wantMarked(t, l, "GET_ID buffer", pagesOf(r.DataAddr, virtio.BlkIDBytes))
}

// TestDirtyLogWithLogAllOffMarksNothing: a log given, VHOST_F_LOG_ALL
// never set.
func TestDirtyLogWithLogAllOffMarksNothing(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d := connect(t, e, frontend.Options{DirtyLog: true})
	l, err := frontend.NewDirtyLog(frontend.LogSize(d.Mem.End()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	setLogBase(t, d, l)
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 8192)}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if p := l.DirtyPages(); len(p) != 0 {
		t.Fatalf("pages %v marked without VHOST_F_LOG_ALL", p)
	}
}

func TestDirtyLogStopsWhenLogAllIsCleared(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d, l := loggingDevice(t, e)
	if err := d.StopLogging(); err != nil {
		t.Fatal(err)
	}
	l.Clear()
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 8192)}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if p := l.DirtyPages(); len(p) != 0 {
		t.Fatalf("pages %v marked after VHOST_F_LOG_ALL was cleared", p)
	}
}

// TestDirtyLogWithoutVringFLogLeavesTheUsedRingUnmarked: the used ring is
// logged only for a ring set up with VHOST_VRING_F_LOG.
func TestDirtyLogWithoutVringFLogLeavesTheUsedRingUnmarked(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d := connect(t, e, frontend.Options{DirtyLog: true})
	l, err := frontend.NewDirtyLog(frontend.LogSize(d.Mem.End()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	setLogBase(t, d, l)
	if err := d.Conn.SetU64(vhostuser.ReqSetFeatures, d.Features|vhostuser.FeatureLogAll); err != nil {
		t.Fatal(err)
	}
	q := d.Queues[0]
	r := &frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 8192)}
	if err := q.Do(r, ioTimeout); err != nil {
		t.Fatal(err)
	}
	wantMarked(t, l, "IN data", pagesOf(r.DataAddr, 8192))
	wantOnlyWithin(t, l, pagesOf(r.DataAddr, 8192), pagesOf(r.StatusAddr, 1))
}

// TestDirtyLogAllBeforeTheLogMarksOnceTheLogComes: QEMU starting a device
// mid-migration sets VHOST_F_LOG_ALL, starts the rings and only then sends
// SET_LOG_BASE (vhost_dev_start).
func TestDirtyLogAllBeforeTheLogMarksOnceTheLogComes(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d := connect(t, e, frontend.Options{DirtyLog: true})
	if err := d.SetLogging(true); err != nil {
		t.Fatalf("VHOST_F_LOG_ALL without a log yet: %v", err)
	}
	q := d.Queues[0]
	if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	l, err := frontend.NewDirtyLog(frontend.LogSize(d.Mem.End()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	setLogBase(t, d, l)
	r := &frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}
	if err := q.Do(r, ioTimeout); err != nil {
		t.Fatal(err)
	}
	wantMarked(t, l, "IN data", pagesOf(r.DataAddr, 4096))
	wantMarked(t, l, "used ring", usedRingPages(q))
}

func TestDirtyLogNewLogBaseReplacesTheOld(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d, first := loggingDevice(t, e)
	second, err := frontend.NewDirtyLog(frontend.LogSize(d.Mem.End()))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	setLogBase(t, d, second)
	first.Clear()
	r := &frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}
	if err := d.Queues[0].Do(r, ioTimeout); err != nil {
		t.Fatal(err)
	}
	wantMarked(t, second, "IN data in the new log", pagesOf(r.DataAddr, 4096))
	if p := first.DirtyPages(); len(p) != 0 {
		t.Fatalf("pages %v marked in the replaced log", p)
	}
}

// TestSetLogBaseRefuses: each bad log is answered with a non-zero reply,
// its fd closed (startEnv counts them), the connection kept; VHOST_F_LOG_ALL
// is then refused, which QEMU does check, until a good log comes.
func TestSetLogBaseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		desc func(size uint64) vhostuser.Log
		noFD bool
	}{
		{"no fd", func(size uint64) vhostuser.Log { return vhostuser.Log{MmapSize: size} }, true},
		{"size 0", func(uint64) vhostuser.Log { return vhostuser.Log{} }, false},
		{"size over the bound", func(uint64) vhostuser.Log { return vhostuser.Log{MmapSize: 1 << 40} }, false},
		{"offset overflow", func(size uint64) vhostuser.Log { return vhostuser.Log{MmapSize: size, MmapOffset: ^uint64(0) - 7} }, false},
		{"past the fd's end", func(size uint64) vhostuser.Log { return vhostuser.Log{MmapSize: size, MmapOffset: 1 << 20} }, false},
		{"smaller than the memory table", func(size uint64) vhostuser.Log { return vhostuser.Log{MmapSize: 1} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOpts{queues: 1})
			d := connect(t, e, frontend.Options{DirtyLog: true})
			l, err := frontend.NewDirtyLog(frontend.LogSize(d.Mem.End()))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if d.Mem.End() <= 8*vhostuser.LogPageSize {
				t.Fatalf("guest memory ends at %#x: a 1-byte log would cover it", d.Mem.End())
			}
			give := l
			if tc.noFD {
				give = nil
			}
			if reply, err := d.SetLogBase(give, tc.desc(l.Size)); err != nil || reply != 1 {
				t.Fatalf("SET_LOG_BASE: reply %d, %v; want reply 1", reply, err)
			}
			if err := d.SetLogging(true); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("VHOST_F_LOG_ALL after a refused log: %v, want nack", err)
			}
			if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}, ioTimeout); err != nil {
				t.Fatalf("I/O after the refusal: %v", err)
			}
			setLogBase(t, d, l)
			if err := d.SetLogging(true); err != nil {
				t.Fatalf("VHOST_F_LOG_ALL with a good log: %v", err)
			}
		})
	}
}

// TestSetLogBaseWithoutLogSHMFDIsNacked: without the protocol feature the
// front-end expects no reply; with REPLY_ACK it gets a nack.
func TestSetLogBaseWithoutLogSHMFDIsNacked(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d := connect(t, e, frontend.Options{})
	l, err := frontend.NewDirtyLog(frontend.LogSize(d.Mem.End()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := d.SetLogBase(l, vhostuser.Log{MmapSize: l.Size}); !errors.Is(err, frontend.ErrNack) {
		t.Fatalf("SET_LOG_BASE without LOG_SHMFD: %v, want nack", err)
	}
	if _, err := d.Conn.GetU64(vhostuser.ReqGetFeatures); err != nil {
		t.Fatalf("connection unusable after it: %v", err)
	}
}

// TestDirtyLogShrunkByTheFrontEndEndsOnlyTheQueue: a front-end that
// truncates the log's memfd under a logging queue makes its next mark fault;
// the queue stops as for a corrupt ring, the process and the connection
// live on.
func TestDirtyLogShrunkByTheFrontEndEndsOnlyTheQueue(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d, l := loggingDevice(t, e)
	truncate(t, l.FD(), 0)
	q := d.Queues[0]
	if err := q.Submit(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}); err != nil {
		t.Fatal(err)
	}
	q.Ring.ForceKick()
	waitNeedsReset(t, d)
	if _, err := d.Conn.GetU64(vhostuser.ReqGetFeatures); err != nil {
		t.Fatalf("connection after the fault: %v", err)
	}
}

// TestSetLogBaseRefusedWhileLoggingDropsTheConnection: QEMU replaces the log
// mid-migration (guest memory grew) and does not look at the reply, so a
// refusal then is the connection's end, which it does see.
func TestSetLogBaseRefusedWhileLoggingDropsTheConnection(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d, l := loggingDevice(t, e)
	if _, err := d.SetLogBase(l, vhostuser.Log{}); err == nil {
		t.Fatal("SET_LOG_BASE of size 0 while logging was answered")
	}
	expectDropped(t, d.Conn)
}
