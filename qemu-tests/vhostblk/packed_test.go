package vhostblk

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
	"github.com/nvblk/nvblk/virtio"
)

// packedBit is VIRTIO_F_RING_PACKED's bit number (virtio 1.2 §2.8, §6):
// its place in the guest's features string and in the session's mask.
const packedBit = 34

// A guest whose vhost-user-blk device asks for the packed virtqueue layout
// (packed=on) on two vCPUs and two queues: the guest's driver and nvblk
// agree on VIRTIO_F_RING_PACKED (the guest's features string, the
// session's features in nvblk status, serve's handshake line), four
// pinned writers put 16 MiB down both queues, round each 128-descriptor
// ring many times, the guest reads every sector back, then runs the usual
// I/O story (overwrites, a flush, a discard, a write-zeroes) on top, and
// after QEMU and nvblk have exited the host reads exactly the model
// through the BTT and nvblk check passes.
func TestAPackedRingGuestWritesThroughTwoQueuesAndReadsEverySectorBack(t *testing.T) {
	img := suite.FormatImage(t, "64M", 4096)
	srv := serve(t, img, "--num-queues", "2")
	const (
		seed  = "packed"
		first = 4096
		count = 4096 // 16 MiB in 16 KiB writes: 1024 requests, 512 a queue
	)
	story := guestIO(t, img.NumSectors)
	steps := []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		// One character per feature bit the driver and device agreed on
		// (drivers/virtio/virtio.c features_show).
		{Op: agentproto.OpRead, Path: "/sys/block/vda/device/features"},
		{Op: agentproto.OpList, Path: "/sys/block/vda/mq"},
		{Op: agentproto.OpRead, Path: "/proc/interrupts"},
		{Op: agentproto.OpParallel, Device: dev, SectorSize: img.SectorSize, LBA: first, Count: count,
			Chunk: 4, Workers: 4, Seed: seed},
		{Op: agentproto.OpRead, Path: "/proc/interrupts"},
		{Op: agentproto.OpFlush, Device: dev},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: img.SectorSize, LBA: first, Count: count, Seed: seed},
	}
	const (
		stepFeatures = 1
		stepMQ       = 2
		stepIRQ0     = 3
		stepIRQ1     = 5
	)
	steps = append(steps, ioSteps(story, img.SectorSize)...)
	cfg := machineConfig(srv, 2, 2, steps)
	cfg.Args[len(cfg.Args)-1] += ",packed=on"
	m := guest.Start(t, suite.Kit, cfg)

	// The session is live from the moment the guest sees its disk, and
	// the guest has 16 MiB still to write: ask serve now.
	if _, err := m.WaitStep(0, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	features := sessionFeatures(t, srv)
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: agent up after %v (kernel uptime %.1f s), whole run %v",
		res.BootToAgent.Round(time.Millisecond), res.GuestUptime, res.Wall.Round(time.Millisecond))
	checkConsole(t, m)
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}

	if features&virtio.FRingPacked == 0 {
		t.Errorf("nvblk status: the session's features %#x lack VIRTIO_F_RING_PACKED (bit %d)", features, packedBit)
	}
	if hs := handshakeFeatures(t, srv); hs&virtio.FRingPacked == 0 {
		t.Errorf("serve's handshake line: features %#x lack VIRTIO_F_RING_PACKED (bit %d)", hs, packedBit)
	}
	bits := strings.TrimSpace(decode[agentproto.ReadData](t, res, stepFeatures).Text)
	if len(bits) <= packedBit || bits[packedBit] != '1' {
		t.Errorf("guest's virtio features %q: bit %d (VIRTIO_F_RING_PACKED) not negotiated", bits, packedBit)
	}
	if mq := decode[[]string](t, res, stepMQ); len(mq) != 2 {
		t.Errorf("guest /sys/block/vda/mq = %v, want two hardware queues", mq)
	}
	before, after := queueInterrupts(t, decode[agentproto.ReadData](t, res, stepIRQ0).Text),
		queueInterrupts(t, decode[agentproto.ReadData](t, res, stepIRQ1).Text)
	for q := range 2 {
		n := after[q] - before[q]
		t.Logf("packed virtqueue req.%d: %d interrupts during the parallel write", q, n)
		if n == 0 {
			t.Errorf("virtqueue req.%d signalled no completion during the parallel write: one queue carried it all", q)
		}
	}

	srv.StopClean(t)
	suite.CheckImage(t, img.Path)
	ops := append([]ioOp{{ioWrite, first, count, seed}}, story...)
	checkWholeDisk(t, suite.ReadImage(t, img, 0, int(img.NumSectors)), ops, img.SectorSize)
}

// sessionFeatures is the features of the one front-end `nvblk status
// --json` lists for the serve b.
func sessionFeatures(t *testing.T, b *guest.Backend) uint64 {
	t.Helper()
	out, err := suite.NVBLK(t, nil, "status", "--socket-path", b.Socket, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Sessions []struct {
			Ready    bool   `json:"ready"`
			Features uint64 `json:"features"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("nvblk status --json: %v\n%s", err, out)
	}
	if len(st.Sessions) != 1 || !st.Sessions[0].Ready {
		t.Fatalf("nvblk status lists sessions %+v, want one front-end, running", st.Sessions)
	}
	return st.Sessions[0].Features
}

// handshakeLine is serve's account of a finished handshake (vhost/
// session.go), with the features the front-end set.
var handshakeLine = regexp.MustCompile(`msg="vhost-user handshake done".*\bfeatures=(0x[0-9a-f]+)`)

// handshakeFeatures is the features of serve's one handshake line.
func handshakeFeatures(t *testing.T, b *guest.Backend) uint64 {
	t.Helper()
	var found []uint64
	for _, line := range strings.Split(b.Output(), "\n") {
		m := handshakeLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		f, err := strconv.ParseUint(m[1], 0, 64)
		if err != nil {
			t.Fatalf("%s: %v in %q", b.Name, err, line)
		}
		found = append(found, f)
	}
	if len(found) == 0 {
		t.Fatalf("%s logged no %q line:\n%s", b.Name, "vhost-user handshake done", b.Output())
	}
	for _, f := range found[1:] {
		if f != found[0] {
			t.Fatalf("%s: handshakes with features %s: the guest renegotiated", b.Name, fmt.Sprint(found))
		}
	}
	return found[0]
}
