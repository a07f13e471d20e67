package vhost_test

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// verifiedIO writes n distinct 8 KiB blocks from sector base on and reads
// each back, failing on the first difference.
func verifiedIO(d *frontend.Device, seed int64, base uint64, n int) error {
	q := d.Queues[0]
	for i := range n {
		data := pattern(seed+int64(i), 8192)
		sector := base + uint64(i)*16
		if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, ioTimeout); err != nil {
			return fmt.Errorf("write %d: %w", i, err)
		}
		got := make([]byte, len(data))
		if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: got}, ioTimeout); err != nil {
			return fmt.Errorf("read %d: %w", i, err)
		}
		if !bytes.Equal(got, data) {
			return fmt.Errorf("block %d at sector %d reads back other data", i, sector)
		}
	}
	return nil
}

// waitSessions waits until srv serves n sessions.
func waitSessions(t *testing.T, srv *vhost.Server, n int) []vhost.SessionInfo {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		s := srv.Sessions()
		if len(s) == n {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions, want %d", len(s), n)
		}
	}
}

// TestTwoFrontEndsOnOneBTTThenOneDetached: a migration's source and
// destination, both doing verified I/O at once on one BTT (each queue on a
// lane of its own), then the first detached while the second goes on.
func TestTwoFrontEndsOnOneBTTThenOneDetached(t *testing.T) {
	fdcheck.Check(t)
	sv := vhosttest.ServeBTT(t, vhosttest.Options{
		BTTOptions: vhosttest.BTTOptions{Size: 64 << 20, LBASize: 4096},
		Config:     blkserve.Config{Server: vhost.Options{Logger: quietLogger(), Migration: true}},
	})
	var devs [2]*frontend.Device
	for i := range devs {
		d, err := frontend.Connect(sv.Sock, frontend.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		devs[i] = d
	}
	var wg sync.WaitGroup
	errs := make([]error, len(devs))
	for i, d := range devs {
		wg.Go(func() { errs[i] = verifiedIO(d, int64(100*i), uint64(i)*4096, 32) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("front-end %d: %v", i, err)
		}
	}
	ss := waitSessions(t, sv.Server, 2)
	if ss[0].ID == ss[1].ID || !ss[0].Ready || !ss[1].Ready {
		t.Fatalf("sessions %+v: want two ready, distinct IDs", ss)
	}
	if !sv.Server.DetachSession(ss[0].ID) {
		t.Fatal("DetachSession found no session to detach")
	}
	if left := waitSessions(t, sv.Server, 1); left[0].ID != ss[1].ID {
		t.Fatalf("session %d left, want %d", left[0].ID, ss[1].ID)
	}
	if err := verifiedIO(devs[1], 7, 8192, 8); err != nil {
		t.Fatalf("the other front-end after the detach: %v", err)
	}
	if err := devs[0].Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 512)}, time.Second); err == nil {
		t.Fatal("the detached front-end's request completed")
	}
}

func TestSessionsReportsThePeerAndItsFeatures(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d := connect(t, e, frontend.Options{DirtyLog: true})
	s := waitSessions(t, e.srv, 1)[0]
	switch {
	case !s.PeerKnown || s.PeerPID != int32(os.Getpid()) || s.PeerUID != uint32(os.Getuid()):
		t.Errorf("peer known %v pid %d uid %d, want this process's %d, %d", s.PeerKnown, s.PeerPID, s.PeerUID, os.Getpid(), os.Getuid())
	case s.Features != d.Features || s.ProtocolFeatures != d.Protocol:
		t.Errorf("features %#x protocol %#x, want %#x %#x", s.Features, s.ProtocolFeatures, d.Features, d.Protocol)
	case len(s.Queues) != 1 || !s.Queues[0].Enabled || !s.Queues[0].Running:
		t.Errorf("queues %+v, want one enabled and running", s.Queues)
	case s.Logging || s.LogBytes != 0:
		t.Errorf("logging %v with %d bytes of log before any", s.Logging, s.LogBytes)
	}
}

func TestSessionsReportsDirtyLoggingOnAndOff(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	d := connect(t, e, frontend.Options{DirtyLog: true})
	l, err := d.StartLogging()
	if err != nil {
		t.Fatal(err)
	}
	if s := e.srv.Sessions()[0]; !s.Logging || s.LogBytes != l.Size {
		t.Fatalf("after StartLogging: logging %v, %d bytes; want on, %d", s.Logging, s.LogBytes, l.Size)
	}
	if err := d.StopLogging(); err != nil {
		t.Fatal(err)
	}
	if s := e.srv.Sessions()[0]; s.Logging {
		t.Fatal("after StopLogging: still logging")
	}
}

func TestStatsSumsTheCountersOfEverySession(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	a, b := connect(t, e, frontend.Options{}), connect(t, e, frontend.Options{})
	if err := verifiedIO(a, 1, 0, 3); err != nil {
		t.Fatal(err)
	}
	if err := verifiedIO(b, 2, 1024, 5); err != nil {
		t.Fatal(err)
	}
	waitRequests := func(want uint64) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			st := e.srv.Stats()
			if got := st.Total().Reads; got == want {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("Stats counts %d reads, want %d", got, want)
			}
		}
	}
	waitRequests(8)
	ss := e.srv.Sessions()
	if ss[0].Queues[0].Reads+ss[1].Queues[0].Reads != 8 || ss[0].Queues[0].Reads != 3 {
		t.Fatalf("sessions count %d and %d reads, want 3 and 5", ss[0].Queues[0].Reads, ss[1].Queues[0].Reads)
	}
	a.Close()
	waitSessions(t, e.srv, 1)
	waitRequests(8) // the ended session's counts stay in the totals
}

func TestDetachDropsEverySession(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	connect(t, e, frontend.Options{})
	connect(t, e, frontend.Options{})
	waitSessions(t, e.srv, 2)
	if !e.srv.Detach() {
		t.Fatal("Detach found no front-end")
	}
	waitSessions(t, e.srv, 0)
	if e.srv.Detach() {
		t.Fatal("Detach with no front-end reported one")
	}
	if st := e.srv.Stats(); st.Connected {
		t.Fatal("Stats reports a front-end after Detach")
	}
}

func TestDetachSessionOfAnUnknownIDDropsNothing(t *testing.T) {
	e := startEnv(t, envOpts{queues: 1})
	connect(t, e, frontend.Options{})
	s := waitSessions(t, e.srv, 1)
	if e.srv.DetachSession(s[0].ID + 1) {
		t.Fatal("DetachSession of an unknown ID reported a detach")
	}
	waitSessions(t, e.srv, 1)
}

// TestSessionLimitRefusesOneMoreAndServesItLater: past MaxSessions a
// front-end is closed at once with a warning, not left hanging; once a
// session ends the next is served.
func TestSessionLimitRefusesOneMoreAndServesItLater(t *testing.T) {
	fdcheck.Check(t)
	lg := quietLogger()
	logs := logtest.NewLocal(lg)
	_, sock := vhosttest.Serve(t, newMemDisk(1<<20, 512), blk.Options{}, vhost.Options{Logger: lg, MaxSessions: 2})
	var devs []*frontend.Device
	for range 2 {
		d, err := frontend.Connect(sock, frontend.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		devs = append(devs, d)
	}
	if d, err := frontend.Connect(sock, frontend.Options{}); err == nil {
		d.Close()
		t.Fatal("a third front-end was served with MaxSessions 2")
	}
	refused := false
	for _, e := range logs.AllEntries() {
		if strings.Contains(e.Message, "refusing a front-end") {
			refused = true
		}
	}
	if !refused {
		t.Fatal("the refusal was not logged")
	}
	devs[0].Close()
	// The session counts against the limit until it is torn down, a
	// moment after the front-end left: retry as QEMU's reconnect does.
	var d *frontend.Device
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if d, err = frontend.Connect(sock, frontend.Options{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a front-end after one left: %v", err)
		}
	}
	defer d.Close()
	if err := verifiedIO(d, 9, 0, 2); err != nil {
		t.Fatal(err)
	}
}

// Without Options.Migration the server offers no dirty logging, so QEMU
// refuses to migrate the guest ("vhost lacks VHOST_F_LOG_ALL") rather than
// move it with a back-end that is not asked to log.
func TestWithoutMigrationNoDirtyLoggingIsOffered(t *testing.T) {
	_, sock := vhosttest.Serve(t, newMemDisk(1<<20, 512), blk.Options{}, vhost.Options{Logger: quietLogger()})
	c, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := c.GetU64(vhostuser.ReqGetFeatures)
	if err != nil || f&vhostuser.FeatureLogAll != 0 {
		t.Fatalf("features %#x (%v): VHOST_F_LOG_ALL offered without Migration", f, err)
	}
	p, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
	if err != nil || p&vhostuser.ProtoLogSHMFD != 0 {
		t.Fatalf("protocol features %#x (%v): LOG_SHMFD offered without Migration", p, err)
	}
}

// TestSessionsReportsAFrontEndThatStoppedTheDeviceWithLoggingOn is what a
// disk move watches for: a migration's source, its dirty log on, stopping
// every ring (GET_VRING_BASE) at the switch-over.
func TestSessionsReportsAFrontEndThatStoppedTheDeviceWithLoggingOn(t *testing.T) {
	e := startEnv(t, envOpts{queues: 2})
	d := connect(t, e, frontend.Options{DirtyLog: true, NumQueues: 2})
	if _, err := d.StartLogging(); err != nil {
		t.Fatal(err)
	}
	if s := e.srv.Sessions()[0]; s.Stopped || !s.Logging {
		t.Fatalf("running, logging: stopped %v logging %v", s.Stopped, s.Logging)
	}
	if _, err := d.Conn.GetVringBase(0); err != nil {
		t.Fatal(err)
	}
	if s := e.srv.Sessions()[0]; s.Stopped {
		t.Fatal("one ring of two stopped: the session says the device stopped")
	}
	if _, err := d.Conn.GetVringBase(1); err != nil {
		t.Fatal(err)
	}
	if s := e.srv.Sessions()[0]; !s.Stopped || !s.Logging {
		t.Fatalf("both rings stopped: stopped %v logging %v, want both", s.Stopped, s.Logging)
	}
}
