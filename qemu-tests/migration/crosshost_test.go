//go:build migration

package migration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/diskmove"
	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// TestGuestAndItsDiskMoveToAnotherHost is a migration between hosts with
// local pmem: two nvblk serves with images of their own (host A and host
// B; here two processes, the disk crossing loopback TCP). The guest
// streams its writes on A; `nvblk move` on A copies the disk into B's
// `serve --incoming` while QMP migrate moves the guest to a QEMU on B,
// which is started with -S so that it stays paused after the switch-over.
// Then, before the guest runs on B, B's disk must equal A's, sector for
// sector, A's being fenced from the switch-over on. The guest then runs on
// B, reads back every sector it wrote and goes on writing there.
func TestGuestAndItsDiskMoveToAnotherHost(t *testing.T) {
	// NVBLK_MOVE_DISK_SIZE measures a larger move (the 1G of the
	// migration benchmark in docs/PERFORMANCE.md).
	size := "64M"
	if v := os.Getenv("NVBLK_MOVE_DISK_SIZE"); v != "" {
		size = v
	}
	imgA := suite.FormatImage(t, size, sectorSize)
	imgB := suite.FormatImage(t, size, sectorSize)
	// Data past the guest's rings, so that the copy has more to move
	// than what the guest writes.
	r := rand.New(rand.NewPCG(1, 2))
	fill := make([]byte, 2048*sectorSize)
	for i := range fill {
		fill[i] = byte(r.Uint32())
	}
	if _, err := suite.NVBLK(t, fill, "write", imgA.Path, "--lba", "4096"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sockA, sockB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	uri := "nbd://" + freeLoopbackPort(t)
	srvA := suite.Serve(t, "nvblk serve on host A", sockA, imgA.Path, "--num-queues", "1", "--migration")
	srvB := suite.Serve(t, "nvblk serve on host B", sockB, imgB.Path, "--num-queues", "1", "--migration", "--incoming", uri)

	src := guest.Start(t, suite.Kit, config(t, sockA))
	acked := make([]int, writers)
	for w := range acked {
		acked[w] = ringSectors / writers
	}
	got := waitWrites(t, "host A", src, sockA, acked, 90*time.Second)
	t.Logf("host A: the guest's writes flow (%v)", got)

	// The disk's copy starts first and goes on while the guest writes.
	var moveOut, moveErr bytes.Buffer
	move := exec.Command(suite.CLI(t), "move", "--socket-path", sockA, "--to", uri, "--json")
	move.Stdout, move.Stderr = &moveOut, &moveErr
	t.Logf("%s", strings.Join(move.Args, " "))
	if err := move.Start(); err != nil {
		t.Fatal(err)
	}
	moved := make(chan error, 1)
	go func() { moved <- move.Wait() }()
	time.Sleep(phase)

	dcfg := config(t, sockB)
	dcfg.Args = append(dcfg.Args, "-S")
	dst := guest.StartIncoming(t, suite.Kit, dcfg)
	t0 := time.Now()
	st, err := src.MigratePaused(dst, migrateTimeout)
	if err != nil {
		t.Fatalf("migration A -> B: %v", err)
	}
	t.Logf("migration A -> B: %v; the guest is paused on B %v after migrate", st, time.Since(t0).Round(time.Millisecond))
	select {
	case err := <-moved:
		if err != nil {
			t.Fatalf("nvblk move: %v\n%s", err, moveErr.String())
		}
	case <-time.After(migrateTimeout):
		t.Fatalf("nvblk move still running %v after the switch-over\n%s", migrateTimeout, moveErr.String())
	}
	var ms diskmove.Stats
	if err := json.Unmarshal(moveOut.Bytes(), &ms); err != nil {
		t.Fatalf("nvblk move --json: %v\n%s", err, moveOut.String())
	}
	t.Logf("disk move A -> B: %d sectors of %d bytes in %d rounds %v; %d sectors sent (%d as zeroes, %d data bytes); "+
		"converged after %v; %d sectors dirty at the switch-over, sent in %v (the downtime the disk adds); %v in all",
		ms.Sectors, ms.SectorSize, ms.Rounds, ms.RoundSectors, ms.SectorsSent, ms.ZeroSectors, ms.BytesSent,
		ms.Converged, ms.CutoverSectors, ms.CutoverTook, ms.Total)
	if ms.Rounds < 2 || ms.SectorsSent < ms.Sectors {
		t.Errorf("move stats %+v: want the whole disk sent and at least the cutover round after it", ms)
	}

	// B holds A's disk as it was at the switch-over: A, fenced since,
	// still does.
	a, b := readDisk(t, sockA, imgA.NumSectors), readDisk(t, sockB, imgB.NumSectors)
	if diff := firstDiff(a, b); diff >= 0 {
		t.Fatalf("host B's disk differs from host A's at the switch-over, first at LBA %d (%s vs %s)", diff,
			describe(a[diff*sectorSize:]), describe(b[diff*sectorSize:]))
	}
	if !bytes.Equal(a[4096*sectorSize:6144*sectorSize], fill) {
		t.Fatal("host A's disk lost the data written before serve")
	}
	t.Logf("host B's disk equals host A's, all %d sectors, before the guest runs on B", imgA.NumSectors)
	// The destination's RAM must be the source's (lostGuestWrites). Here
	// there is no way back: A's disk is fenced since the switch-over, and
	// QEMU refuses to migrate a source paused by a completed migration
	// again, so a stream QEMU got wrong fails the test.
	if lost := lostGuestWrites(t, src, dst); lost != "" {
		t.Fatalf("migration A -> B: %s (QEMU's own; see the package documentation)", lost)
	}
	t.Logf("the destination's RAM equals the source's")
	if err := src.Quit(); err != nil {
		t.Fatal(err)
	}

	if err := dst.Cont(); err != nil {
		t.Fatal(err)
	}
	for w := range acked {
		acked[w] = max(acked[w], got[w]) + ringSectors/writers
	}
	got = waitWrites(t, "host B", dst, sockB, acked, stall)
	t.Logf("host B: the guest's writes flow (%v)", got)
	if err := dst.PowerButton(); err != nil {
		t.Fatal(err)
	}
	res, err := dst.Wait()
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*guest.Machine{"host A": src, "host B": dst} {
		if bad := guest.KernelTrouble(m.Console()); len(bad) > 0 {
			t.Errorf("%s's guest console reports trouble:\n%s", name, strings.Join(bad, "\n"))
		}
	}
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}
	var d agentproto.StreamData
	if err := res.Decode(streamStep, &d); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %d writes acknowledged and read back, %d read again before being overwritten; %d ring sectors verified at the end",
		d.Writes, d.Rechecked, d.Verified)
	srvA.StopClean(t)
	srvB.StopClean(t)
	suite.CheckImage(t, imgB.Path)
	checkRings(t, "host B's image (nvblk read)", d.Writers, suite.ReadImage(t, imgB, 0, ringSectors))
}

// freeLoopbackPort is a TCP port on 127.0.0.1 nothing listens on now.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// readDisk reads every sector of the disk served on sock, through a
// vhost-user front-end of its own: a second session beside the QEMU's.
func readDisk(t *testing.T, sock string, sectors uint64) []byte {
	t.Helper()
	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatalf("%s: %v", sock, err)
	}
	defer d.Close()
	out := make([]byte, sectors*sectorSize)
	const chunk = 32 // sectors per read, 128 KiB
	for lba := uint64(0); lba < sectors; lba += chunk {
		n := min(chunk, sectors-lba)
		buf := out[lba*sectorSize : (lba+n)*sectorSize]
		if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: lba * (sectorSize / 512), Data: buf}, 10*time.Second); err != nil {
			t.Fatalf("%s: read LBA %d: %v", sock, lba, err)
		}
	}
	return out
}

// firstDiff is the first LBA where a and b differ, -1 if none.
func firstDiff(a, b []byte) int {
	for lba := 0; lba*sectorSize < len(a); lba++ {
		if !bytes.Equal(a[lba*sectorSize:(lba+1)*sectorSize], b[lba*sectorSize:(lba+1)*sectorSize]) {
			return lba
		}
	}
	return -1
}

func describe(sector []byte) string {
	return fmt.Sprintf("%s…", agentproto.DescribeStreamSector(sector[:sectorSize]))
}
