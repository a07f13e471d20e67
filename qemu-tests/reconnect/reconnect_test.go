package reconnect

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

const dev = "/dev/vda"

// The guest, two vCPUs on a disk of two request queues, writes a stream
// of sequence-numbered sectors (each sector's content is Pattern(seed,
// lba): only that sector of this stream has it), four writes in flight at
// a time from four writers pinned two per CPU, so two per queue, each
// writer fsyncing every 16 of its sectors and logging the sectors it saw
// acknowledged. Meanwhile the back-end is killed with SIGKILL at seeded
// random moments, each time while the guest's writes are flowing, and
// started again on the same socket and image; QEMU reconnects within a
// second and hands the new back-end the inflight region, and the new
// back-end resubmits what the old one had taken. Once, instead, it is
// stopped with SIGTERM: it drains, exits 0, and the next one carries on.
// The guest sees no I/O error, finishes its stream, and every sector it
// saw acknowledged is on the image. Each back-end resumed exactly the
// queues its predecessor died with requests in flight on (the test reads
// the region at the moment of each kill), and each queue was so resumed
// at least once.
func TestBackendRestartsUnderGuestIOLoseNoAcknowledgedWrite(t *testing.T) {
	const (
		kills = 10
		// About 40 MiB of 4 KiB sectors. With two queues the guest
		// writes about 500 sectors between one restart and the next
		// (a random pause, then the reconnect), so eleven take about
		// 5500: the stream must outlast them, on a fast box too.
		sectors  = 10000
		workers  = 4
		perFsync = 16
		stream   = "reconnect-stream"
	)
	seed := uint64(20261125)
	if s := os.Getenv("NVBLK_RECONNECT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NVBLK_RECONNECT_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("kill moments seeded with %d (NVBLK_RECONNECT_SEED to replay)", seed)
	rng := rand.New(rand.NewPCG(seed, 0x6e76626c6b))
	start := time.Now()

	img := suite.FormatImage(t, "64M", 4096)
	if img.NumSectors < sectors {
		t.Fatalf("image has %d sectors, the stream needs %d", img.NumSectors, sectors)
	}
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	gen := 0
	srv := serve(t, gen, sock, img)
	var servers []*guest.Backend // the stopped ones; servers[g] is generation g

	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpList, Path: "/sys/block/vda/mq"},
		{Op: agentproto.OpSeqWrite, Device: dev, SectorSize: img.SectorSize, LBA: 0, Count: sectors,
			Workers: workers, Chunk: perFsync, Seed: stream, Pin: true},
	}
	const seqStep = 2
	m := guest.Start(t, suite.Kit, guest.Config{
		MemoryMiB:    256,
		CPUs:         queues,
		SharedMemory: true,
		Args: []string{
			"-chardev", "socket,id=c0,path=" + sock + ",reconnect=1",
			"-device", fmt.Sprintf("vhost-user-blk-pci,chardev=c0,num-queues=%d", queues),
		},
		Steps: steps,
	})

	// inflightAt is, per generation, the heads in flight on each queue
	// when it stopped: read from the region for a kill, none for SIGTERM.
	inflightAt := map[int][]int{}
	// caught counts, per queue, the back-ends that resumed it with
	// requests in flight and resubmitted them.
	caught := make([]int, queues)
	resubmitted := make([]int, queues)
	// checkResumed checks that generation g+1 resumed exactly what g left.
	// A queue with heads in flight: resumed from the region at a non-zero
	// avail index (it had carried writes) with that many resubmitted, or
	// fewer if g died between storing used.idx and clearing the batch's
	// flags (recovery then counts the batch done), and its worker logged
	// resubmitting them. A queue with none: nothing resubmitted.
	checked := 0
	checkResumed := func(g int) {
		t.Helper()
		next, err := readRestartLog(servers[g+1])
		if err != nil {
			t.Fatal(err)
		}
		for q, n := range next.resubmitted {
			if q < 0 || q >= queues {
				t.Errorf("%s resubmitted %d requests on queue %d: the device has queues 0..%d", servers[g+1].Name, n, q, queues-1)
				continue
			}
			resubmitted[q] += n
		}
		for _, r := range next.resumes {
			t.Log(r)
			if r.queue < 0 || r.queue >= queues {
				t.Errorf("%v: the device has queues 0..%d", r, queues-1)
			}
		}
		heads := inflightAt[g]
		for q := range queues {
			var r *resume
			for i := range next.resumes {
				if next.resumes[i].queue == q && (r == nil || next.resumes[i].resubmit > r.resubmit) {
					r = &next.resumes[i]
				}
			}
			switch {
			case heads[q] == 0 && r != nil && r.resubmit > 0:
				t.Errorf("%v, but %s left nothing in flight on queue %d", *r, servers[g].Name, q)
			case heads[q] == 0:
			case r == nil:
				t.Errorf("%s died with %d requests in flight on queue %d, and %s did not resume the queue from the inflight region",
					servers[g].Name, heads[q], q, servers[g+1].Name)
			case r.resubmit < 1 || r.resubmit > heads[q] || r.lastAvail == 0:
				t.Errorf("%v, but %s died with %d requests in flight on the queue", *r, servers[g].Name, heads[q])
			case next.resubmitted[q] != r.resubmit:
				t.Errorf("%v, but its worker logged resubmitting %d", *r, next.resubmitted[q])
			default:
				caught[q]++
			}
		}
	}

	// restart replaces the back-end: SIGKILL or SIGTERM, then a new one on
	// the same socket, and waits until the guest's writes flow again.
	restart := func(how string) {
		t.Helper()
		before := acked(t, m)
		switch how {
		case "SIGKILL":
			srv.Kill(t)
		case "SIGTERM":
			srv.StopClean(t)
		}
		down := time.Now()
		servers = append(servers, srv)
		// A stopped back-end's log is whole: check what it resumed.
		for ; checked+1 < len(servers); checked++ {
			checkResumed(checked)
		}
		gen++
		srv = serve(t, gen, sock, img)
		got := waitAcked(t, m, len(before)+workers*perFsync, 60*time.Second)
		t.Logf("%s #%d with %d sectors acknowledged; I/O flowed again %v later (%d acknowledged)",
			how, gen, len(before), time.Since(down).Round(10*time.Millisecond), len(got))
	}

	// A kill at a random moment catches requests in flight on one queue
	// or the other about as often as on both or neither; left to chance,
	// ten kills would miss a queue in about one run in a hundred. So
	// until each queue has been caught, a kill's moment is refined: the
	// back-end is frozen (SIGSTOP), the inflight region QEMU keeps is
	// read, and unless a queue not yet caught has requests in flight the
	// back-end is thawed and tried again a few milliseconds later. Once
	// every queue was caught, kills land at their random moments.
	seen := make([]bool, queues)
	freeze := func() []int {
		t.Helper()
		for try := 0; ; try++ {
			srv.Freeze(t)
			heads, err := inflightHeads(m.Pid(), queues)
			if err != nil {
				t.Fatal(err)
			}
			want := !slices.Contains(seen, false)
			for q := range queues {
				want = want || (!seen[q] && heads[q] > 0)
			}
			if want || try == 300 {
				for q := range queues {
					seen[q] = seen[q] || heads[q] > 0
				}
				return heads
			}
			srv.Thaw(t)
			time.Sleep(time.Duration(1+rng.IntN(10)) * time.Millisecond)
		}
	}
	// The first moment: the guest is writing.
	waitAcked(t, m, workers*perFsync, 90*time.Second)
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		inflightAt[gen] = freeze()
		t.Logf("killing %s with requests in flight per queue %v", srv.Name, inflightAt[gen])
		restart("SIGKILL")
	}
	time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
	inflightAt[gen] = make([]int, queues) // a clean stop completes what it took
	restart("SIGTERM")

	// A request that no back-end completes shows as the guest's
	// acknowledgements stopping short of the stream.
	waitStream(t, m, sectors, 30*time.Second)
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	console := m.Console()
	for _, bad := range guest.KernelTrouble(console) {
		t.Errorf("guest kernel: %s", bad)
	}
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}
	var mq []string
	if err := res.Decode(1, &mq); err != nil {
		t.Fatal(err)
	}
	if len(mq) != queues {
		t.Errorf("guest /sys/block/vda/mq = %v, want %d hardware queues", mq, queues)
	}
	var d agentproto.SeqWriteData
	if err := res.Decode(seqStep, &d); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %d sectors written, %d fsyncs, slowest write %d ms", d.Sectors, d.Fsyncs, d.SlowestMS)
	if len(d.Writers) != workers {
		t.Errorf("guest reported %d writers, want %d", len(d.Writers), workers)
	}
	for _, w := range d.Writers {
		t.Logf("writer %d pinned to CPU %d ran on %v: %d writes", w.Worker, w.Pinned, w.CPUs, w.Writes)
		if w.Pinned != w.Worker%queues || len(w.CPUs) != 1 || w.CPUs[0] != w.Pinned || w.Writes != sectors/workers {
			t.Errorf("writer %+v: want %d writes, all on CPU %d", w, sectors/workers, w.Worker%queues)
		}
	}
	srv.StopClean(t)
	servers = append(servers, srv)
	for ; checked+1 < len(servers); checked++ {
		checkResumed(checked)
	}

	// Every sector the guest saw acknowledged holds its own content.
	ack := acked(t, m)
	if len(ack) != sectors || d.Sectors != sectors {
		t.Fatalf("guest acknowledged %d sectors (reported %d), want all %d", len(ack), d.Sectors, sectors)
	}
	suite.CheckImage(t, img.Path)
	got := suite.ReadImage(t, img, 0, sectors)
	bad := 0
	for lba := range ack {
		s := got[int(lba)*img.SectorSize : int(lba+1)*img.SectorSize]
		if !bytes.Equal(s, agentproto.Pattern(stream, lba, img.SectorSize)) {
			if bad++; bad <= 10 {
				t.Errorf("LBA %d, acknowledged to the guest, starts %x on the image", lba, s[:16])
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d acknowledged sectors are not on the image", bad, len(ack))
	}
	total := 0
	for _, n := range resubmitted {
		total += n
	}
	t.Logf("verified %d acknowledged sectors across %d kills and a SIGTERM; %d requests resubmitted from inflight regions (per queue %v, by %v back-ends); %v in all",
		len(ack), kills, total, resubmitted, caught, time.Since(start).Round(time.Second))
	if total == 0 {
		t.Errorf("no back-end resubmitted anything in %d kills under I/O: the inflight path was never exercised", kills)
	}
	for q := range queues {
		if caught[q] == 0 {
			t.Errorf("queue %d was never resumed from the inflight region with requests in flight and resubmitted, in %d kills under I/O on every queue", q, kills)
		}
	}
	if n := len(regexp.MustCompile(`(?m)I/O error|blk_update_request|Buffer I/O error`).FindAllString(console, -1)); n > 0 {
		t.Errorf("the guest console reports %d I/O errors", n)
	}
}

// acked is every sector the guest reported acknowledged so far.
func acked(t *testing.T, m *guest.Machine) map[uint64]bool {
	t.Helper()
	out := map[uint64]bool{}
	for _, r := range m.Reports() {
		if r.Op != agentproto.OpProgress {
			continue
		}
		var p agentproto.ProgressData
		if err := json.Unmarshal(r.Data, &p); err != nil {
			t.Fatalf("progress report %s: %v", r.Data, err)
		}
		for _, lba := range p.LBAs {
			if out[lba] {
				t.Fatalf("LBA %d acknowledged twice", lba)
			}
			out[lba] = true
		}
	}
	return out
}

// waitAcked waits until the guest reported at least n sectors
// acknowledged, failing the test on a guest that stopped or erred.
func waitAcked(t *testing.T, m *guest.Machine, n int, timeout time.Duration) map[uint64]bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := acked(t, m)
		if len(got) >= n {
			return got
		}
		for _, r := range m.Reports() {
			if r.OK && r.Op == agentproto.OpDone {
				t.Fatalf("guest finished its stream with %d sectors acknowledged, waiting for %d: the stream is too short for the restarts", len(got), n)
			}
			if !r.OK {
				t.Fatalf("guest %s (step %d) failed with %d sectors acknowledged, waiting for %d: %s",
					r.Op, r.Step, len(got), n, r.Error)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sectors acknowledged after %v, waiting for %d\nconsole tail:\n%s", len(got), timeout, n, tail(m.Console(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitStream waits until the guest reported n sectors acknowledged or its
// script ended, failing the test if no sector was acknowledged for stall.
func waitStream(t *testing.T, m *guest.Machine, n int, stall time.Duration) {
	t.Helper()
	last, since := -1, time.Now()
	for {
		got := len(acked(t, m))
		if got >= n {
			return
		}
		for _, r := range m.Reports() {
			if r.Op == agentproto.OpDone || !r.OK {
				return // the caller reads the report
			}
		}
		if got != last {
			last, since = got, time.Now()
		}
		if time.Since(since) > stall {
			t.Fatalf("the guest acknowledged %d of %d sectors, and nothing more for %v: a write never completed\nconsole tail:\n%s",
				got, n, stall, tail(m.Console(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
