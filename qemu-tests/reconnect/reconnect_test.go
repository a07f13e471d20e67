package reconnect

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

const dev = "/dev/vda"

// The guest writes a stream of sequence-numbered sectors (each sector's
// content is Pattern(seed, lba): only that sector of this stream has it),
// four writes in flight at a time, each writer fsyncing every 16 of its
// sectors and logging the sectors it saw acknowledged. Meanwhile the back-end
// is killed with SIGKILL at seeded random moments, each time while the
// guest's writes are flowing, and started again on the same socket and
// image; QEMU reconnects within a second and hands the new back-end the
// inflight region, and the new back-end resubmits what the old one had
// taken. Once, instead, it is stopped with SIGTERM: it drains, exits 0,
// and the next one carries on. The guest sees no I/O error, finishes its
// stream, and every sector it saw acknowledged is on the image.
func TestBackendRestartsUnderGuestIOLoseNoAcknowledgedWrite(t *testing.T) {
	const (
		kills    = 10
		sectors  = 5000 // about 20 MiB of 4 KiB sectors
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
	var servers []*guest.Backend

	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpSeqWrite, Device: dev, SectorSize: img.SectorSize, LBA: 0, Count: sectors,
			Workers: workers, Chunk: perFsync, Seed: stream},
	}
	m := guest.Start(t, suite.Kit, guest.Config{
		MemoryMiB:    256,
		SharedMemory: true,
		Args: []string{
			"-chardev", "socket,id=c0,path=" + sock + ",reconnect=1",
			"-device", "vhost-user-blk-pci,chardev=c0,num-queues=1",
		},
		Steps: steps,
	})

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
		gen++
		srv = serve(t, gen, sock, img)
		got := waitAcked(t, m, len(before)+workers*perFsync, 60*time.Second)
		t.Logf("%s #%d with %d sectors acknowledged; I/O flowed again %v later (%d acknowledged)",
			how, gen, len(before), time.Since(down).Round(10*time.Millisecond), len(got))
	}

	// The first moment: the guest is writing.
	waitAcked(t, m, workers*perFsync, 90*time.Second)
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		restart("SIGKILL")
	}
	time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
	restart("SIGTERM")

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
	var d agentproto.SeqWriteData
	if err := res.Decode(1, &d); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %d sectors written, %d fsyncs, slowest write %d ms", d.Sectors, d.Fsyncs, d.SlowestMS)
	servers = append(servers, srv)
	srv.StopClean(t)

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
	resubmitted := 0
	for _, s := range servers {
		resubmitted += resubmittedBy(s)
		for _, line := range resumed(s) {
			t.Logf("%s: %s", s.Name, line)
		}
	}
	t.Logf("verified %d acknowledged sectors across %d kills and a SIGTERM; %d requests resubmitted from inflight regions; %v in all",
		len(ack), kills, resubmitted, time.Since(start).Round(time.Second))
	if resubmitted == 0 {
		t.Errorf("no back-end resubmitted anything in %d kills under I/O: the inflight path was never exercised", kills)
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
			if !r.OK || r.Op == agentproto.OpDone {
				t.Fatalf("guest %s (step %d, ok %v) with %d sectors acknowledged, waiting for %d: %s",
					r.Op, r.Step, r.OK, len(got), n, r.Error)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sectors acknowledged after %v, waiting for %d\nconsole tail:\n%s", len(got), timeout, n, tail(m.Console(), 20))
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
