package vhost_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// stallingBackendEnv makes the test binary a back-end that completes
// stallAfter writes and then hangs in the next one, to be killed.
const stallingBackendEnv = "NVBLK_TEST_STALLING_BACKEND"

const stallAfter = 3

func TestMain(m *testing.M) {
	if sock := os.Getenv(stallingBackendEnv); sock != "" {
		runStallingBackend(sock)
		return
	}
	os.Exit(m.Run())
}

// stallingDisk is a memDisk whose write number stallAfter+1 never returns.
type stallingDisk struct {
	*memDisk
	writes atomic.Int32
}

func (d *stallingDisk) WriteV(lba uint64, iov [][]byte) error {
	if d.writes.Add(1) > stallAfter {
		fmt.Println("stalled")
		select {}
	}
	return d.memDisk.WriteV(lba, iov)
}

func runStallingBackend(sock string) {
	disk := &stallingDisk{memDisk: newMemDisk(4<<20, 512)}
	dv := blk.NewDevice(disk, blk.Options{NumQueues: 1, Serial: "stalling"})
	lg := logrus.New()
	lg.SetOutput(os.Stderr)
	srv := vhost.NewServer(blk.NewBackend(dv, disk), vhost.Options{Logger: lg})
	l, err := vhostuser.Listen(sock)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("listening")
	srv.Serve(l)
}

// startStallingBackend runs the test binary as a stalling back-end and
// returns once it listens.
func startStallingBackend(t *testing.T, sock string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), stallingBackendEnv+"="+sock)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if l := waitLine(t, lines); l != "listening" {
		t.Fatalf("stalling back-end: %q", l)
	}
	return cmd, lines
}

func waitLine(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("stalling back-end exited")
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("stalling back-end said nothing for 10 s")
	}
	return ""
}

// inflightHeads reads queue 0 of an inflight region the way the spec lays
// it out (QueueRegionSplit: a 16-byte header, then 16-byte DescStateSplit
// entries, inflight at byte 0 and counter at byte 8), independently of the
// back-end's code: the heads in flight, in counter order.
func inflightHeads(t *testing.T, inf vhostuser.Inflight, fd int) (heads []uint16, usedIdx uint16) {
	t.Helper()
	b, err := unix.Mmap(fd, int64(inf.MmapOffset), int(inf.MmapSize), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	if v := binary.LittleEndian.Uint16(b[8:]); v != 1 {
		t.Fatalf("region version %d, want 1", v)
	}
	if n := binary.LittleEndian.Uint16(b[10:]); n != inf.QueueSize {
		t.Fatalf("region desc_num %d, want %d", n, inf.QueueSize)
	}
	byCounter := map[uint64]uint16{}
	for h := 0; h < int(inf.QueueSize); h++ {
		d := b[16+16*h:]
		if d[0] == 1 {
			byCounter[binary.LittleEndian.Uint64(d[8:])] = uint16(h)
		}
	}
	for c := uint64(0); len(heads) < len(byCounter); c++ {
		if h, ok := byCounter[c]; ok {
			heads = append(heads, h)
		}
		if c > 1<<16 {
			t.Fatalf("in-flight counters %v are not dense", byCounter)
		}
	}
	return heads, binary.LittleEndian.Uint16(b[14:])
}

// A back-end takes four writes off the ring (it has done three, unpublished,
// and hangs in the fourth) and is killed with SIGKILL. The front-end keeps
// the inflight region, as QEMU does, and resumes on a new back-end with its
// used index as the ring base. The new back-end resubmits the four from the
// region, in the order they were taken, then serves the rest from the ring:
// every write completes once, with its data on the new disk, and no fd is
// left open on either side of this process.
func TestInflightWritesTakenByAKilledBackendAreResubmittedByTheNext(t *testing.T) {
	fdcheck.Check(t)
	sock := filepath.Join(t.TempDir(), "stalling.sock")
	helper, lines := startStallingBackend(t, sock)

	d, err := frontend.Connect(sock, frontend.Options{Inflight: true, QueueSize: 16, Indirect: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if d.InflightFD < 0 || d.Inflight.NumQueues != 1 || d.Inflight.QueueSize != 16 {
		t.Fatalf("no inflight region from the back-end: %+v fd %d", d.Inflight, d.InflightFD)
	}
	q := d.Queues[0]
	var reqs []*frontend.Request
	for i := 0; i < 8; i++ {
		reqs = append(reqs, &frontend.Request{Type: virtio.BlkTOut, Sector: uint64(8 * i), Data: pattern(int64(100+i), 4096)})
	}
	// All eight appear at once: a worker already awake would otherwise
	// take and publish the first few one by one, before the stall.
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

	heads, used := inflightHeads(t, d.Inflight, d.InflightFD)
	if fmt.Sprint(heads) != fmt.Sprint(taken) || used != 0 || q.Ring.UsedIdx() != 0 {
		t.Fatalf("after the kill the region has %v in flight (used_idx %d, ring used %d); want %v, 0, 0",
			heads, used, q.Ring.UsedIdx(), taken)
	}
	if done, _ := q.Reap(); len(done) != 0 {
		t.Fatalf("%d requests completed by a back-end that published nothing", len(done))
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
	if heads, used := inflightHeads(t, d.Inflight, d.InflightFD); len(heads) != 0 || used != 8 {
		t.Errorf("after the new back-end: %v in flight, used_idx %d; want none and 8", heads, used)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}
