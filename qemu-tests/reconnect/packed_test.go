package reconnect

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
	"github.com/nvblk/nvblk/virtio"
)

// The packed-ring account of a restart (vhost/inflight_packed.go): its
// positions are index|wrap<<15, in hex.
const msgResumingPacked = "vhost: resuming packed queue from the inflight region"

// The split-ring restart test's story on a device that asks for packed
// virtqueues (packed=on), shorter: three SIGKILLs under the guest's pinned
// writers on two queues and a SIGTERM. A packed ring's used descriptors
// overwrite the available ones, so what the next back-end resubmits comes
// from the copies the inflight region keeps (QueueRegionPacked), not from
// the ring. Every back-end negotiates VIRTIO_F_RING_PACKED again, resumes
// each queue its predecessor died with chains in flight on (read from the
// region at the kill) and resubmits them; the guest sees no I/O error,
// every sector it saw acknowledged is on the image, and nvblk check passes.
func TestBackendRestartsUnderAPackedRingGuestLoseNoAcknowledgedWrite(t *testing.T) {
	const (
		kills = 3
		// About 500 sectors go by a restart on an idle box (see the
		// split-ring test): four restarts take 2000, and the stream must
		// outlast them. A loaded box writes fewer in between, and the
		// whole stream takes longer.
		sectors  = 3000
		workers  = 4
		perFsync = 16
		stream   = "packed-reconnect-stream"
	)
	seed := uint64(20261201)
	if s := os.Getenv("NVBLK_RECONNECT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NVBLK_RECONNECT_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("kill moments seeded with %d (NVBLK_RECONNECT_SEED to replay)", seed)
	rng := rand.New(rand.NewPCG(seed, 0x7061636b6564))
	start := time.Now()

	img := suite.FormatImage(t, "64M", 4096)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	gen := 0
	srv := serve(t, gen, sock, img)
	var servers []*guest.Backend // the stopped ones; servers[g] is generation g

	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpRead, Path: "/sys/block/vda/device/features"},
		{Op: agentproto.OpSeqWrite, Device: dev, SectorSize: img.SectorSize, LBA: 0, Count: sectors,
			Workers: workers, Chunk: perFsync, Seed: stream, Pin: true},
	}
	const featuresStep, seqStep = 1, 2
	m := guest.Start(t, suite.Kit, guest.Config{
		MemoryMiB:    256,
		CPUs:         queues,
		SharedMemory: true,
		Args: []string{
			"-chardev", "socket,id=c0,path=" + sock + ",reconnect=1",
			"-device", fmt.Sprintf("vhost-user-blk-pci,chardev=c0,num-queues=%d,packed=on", queues),
		},
		Steps: steps,
	})

	inflightAt := map[int][]int{} // per generation, the chains in flight per queue when it stopped
	caught := make([]int, queues)
	resubmitted := 0
	checked := 0
	checkResumed := func(g int) {
		t.Helper()
		next := servers[g+1]
		if f := handshakeFeatures(t, next); f&virtio.FRingPacked == 0 {
			t.Errorf("%s: the front-end set features %#x, without VIRTIO_F_RING_PACKED", next.Name, f)
		}
		resumes, resub := readPackedRestartLog(t, next)
		heads := inflightAt[g]
		for q := range queues {
			r, ok := resumes[q]
			switch {
			case heads[q] == 0 && ok && r > 0:
				t.Errorf("%s resumed queue %d with %d chains to resubmit, but %s left none in flight", next.Name, q, r, servers[g].Name)
			case heads[q] == 0:
			case !ok:
				t.Errorf("%s died with %d chains in flight on queue %d, and %s did not resume the queue from the inflight region",
					servers[g].Name, heads[q], q, next.Name)
			// Fewer only when the kill fell inside an update the region
			// rolls back (a chain half recorded, a batch published but not
			// committed).
			case r < 1 || r > heads[q]:
				t.Errorf("%s resumed queue %d with %d chains to resubmit, but %s died with %d in flight", next.Name, q, r, servers[g].Name, heads[q])
			case resub[q] != r:
				t.Errorf("%s resumed queue %d with %d chains to resubmit, but its worker logged resubmitting %d", next.Name, q, r, resub[q])
			default:
				caught[q]++
				resubmitted += r
			}
		}
	}
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
		for ; checked+1 < len(servers); checked++ {
			checkResumed(checked)
		}
		gen++
		srv = serve(t, gen, sock, img)
		got := waitAcked(t, m, len(before)+workers*perFsync, 60*time.Second)
		t.Logf("%s #%d with %d sectors acknowledged; I/O flowed again %v later (%d acknowledged)",
			how, gen, len(before), time.Since(down).Round(10*time.Millisecond), len(got))
	}
	// As in the split-ring test: until each queue was caught with chains
	// in flight, a kill waits (freeze, read the region, thaw) for a
	// moment that catches one not yet caught.
	seen := make([]bool, queues)
	freeze := func() []int {
		t.Helper()
		for try := 0; ; try++ {
			srv.Freeze(t)
			heads, err := packedInflightHeads(m.Pid(), queues)
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
	waitAcked(t, m, workers*perFsync, 90*time.Second)
	for range kills {
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		inflightAt[gen] = freeze()
		t.Logf("killing %s with chains in flight per queue %v", srv.Name, inflightAt[gen])
		restart("SIGKILL")
	}
	inflightAt[gen] = make([]int, queues)
	restart("SIGTERM")

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
	var bits agentproto.ReadData
	if err := res.Decode(featuresStep, &bits); err != nil {
		t.Fatal(err)
	}
	if b := strings.TrimSpace(bits.Text); len(b) <= 34 || b[34] != '1' {
		t.Errorf("guest's virtio features %q: bit 34 (VIRTIO_F_RING_PACKED) not negotiated", b)
	}
	var d agentproto.SeqWriteData
	if err := res.Decode(seqStep, &d); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %d sectors written, %d fsyncs, slowest write %d ms", d.Sectors, d.Fsyncs, d.SlowestMS)
	srv.StopClean(t)
	servers = append(servers, srv)
	for ; checked+1 < len(servers); checked++ {
		checkResumed(checked)
	}
	if f := handshakeFeatures(t, servers[0]); f&virtio.FRingPacked == 0 {
		t.Errorf("%s: the front-end set features %#x, without VIRTIO_F_RING_PACKED", servers[0].Name, f)
	}

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
	t.Logf("verified %d acknowledged sectors across %d kills and a SIGTERM; %d chains resubmitted (queues resumed so %v); %v in all",
		len(ack), kills, resubmitted, caught, time.Since(start).Round(time.Second))
	for q := range queues {
		if caught[q] == 0 {
			t.Errorf("packed queue %d was never resumed from the inflight region with chains in flight, in %d kills under I/O", q, kills)
		}
	}
}

// readPackedRestartLog is, from b's log, the chains each packed queue was
// resumed with (the most, if a queue was resumed twice) and the requests
// each queue's worker logged resubmitting. A line with a message but not
// its fields fails the test: it must not pass because the log changed.
func readPackedRestartLog(t *testing.T, b *guest.Backend) (resumes, resubmitted map[int]int) {
	t.Helper()
	resumes, resubmitted = map[int]int{}, map[int]int{}
	for _, line := range strings.Split(b.Output(), "\n") {
		f := logFields(line)
		switch f["msg"] {
		case msgResumingPacked:
			v, err := intFields(f, "queue", "resubmit")
			if err != nil {
				t.Fatalf("%s: %v in %q", b.Name, err, line)
			}
			for _, k := range []string{"used", "vring_base", "last_avail"} {
				if _, err := strconv.ParseUint(f[k], 0, 16); err != nil {
					t.Fatalf("%s: field %s: %v in %q", b.Name, k, err, line)
				}
			}
			t.Logf("%s: packed queue %d resumed at avail %s (used %s, QEMU's base %s) with %d to resubmit",
				b.Name, v[0], f["last_avail"], f["used"], f["vring_base"], v[1])
			resumes[v[0]] = max(resumes[v[0]], v[1])
		case msgResubmitted:
			v, err := intFields(f, "queue", "requests")
			if err != nil {
				t.Fatalf("%s: %v in %q", b.Name, err, line)
			}
			resubmitted[v[0]] += v[1]
		}
	}
	return resumes, resubmitted
}

// handshakeFeatures is the features of b's first "vhost-user handshake
// done" line (vhost/session.go).
func handshakeFeatures(t *testing.T, b *guest.Backend) uint64 {
	t.Helper()
	for _, line := range strings.Split(b.Output(), "\n") {
		if f := logFields(line); f["msg"] == "vhost-user handshake done" {
			v, err := strconv.ParseUint(f["features"], 0, 64)
			if err != nil {
				t.Fatalf("%s: features: %v in %q", b.Name, err, line)
			}
			return v
		}
	}
	t.Fatalf("%s logged no handshake", b.Name)
	return 0
}

// packedInflightHeads is inflightHeads for packed rings: per queue, the
// chains the region QEMU keeps marks taken and not completed. The layout
// is the spec's QueueRegionPacked (QEMU docs/interop/vhost-user.rst,
// "Inflight I/O tracking"), read independently of vhost/: n equal queue
// regions, each a 32-byte header (u64 features, u16 version, u16
// desc_num, free and used positions) and desc_num 32-byte
// DescStatePacked entries whose first byte is inflight, set on a chain's
// head entry.
func packedInflightHeads(qemuPid, n int) ([]int, error) {
	return countInflight(qemuPid, n, inflightLayout{name: "packed", header: 32, entry: 32})
}
