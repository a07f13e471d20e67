package vhostblk

import (
	"bytes"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

const dev = "/dev/vda"

// ioKind is what one guest operation does to a range of sectors.
type ioKind int

const (
	ioWrite   ioKind = iota // Pattern(seed) per sector, O_DIRECT, fsynced
	ioDiscard               // BLKDISCARD: a virtio-blk DISCARD
	ioZero                  // BLKZEROOUT: a virtio-blk WRITE_ZEROES
)

type ioOp struct {
	kind  ioKind
	lba   uint64
	count int
	seed  string
}

// disk is the model of what the guest left on the disk: for each touched
// sector, the seed of its pattern, or "" for zeroes. Untouched sectors of
// a fresh disk read as zeroes too.
type disk map[uint64]string

func (d disk) apply(ops []ioOp) {
	for _, op := range ops {
		for i := 0; i < op.count; i++ {
			if op.kind == ioWrite {
				d[op.lba+uint64(i)] = op.seed
			} else {
				d[op.lba+uint64(i)] = ""
			}
		}
	}
}

func (d disk) sector(lba uint64, size int) []byte {
	if seed := d[lba]; seed != "" {
		return agentproto.Pattern(seed, lba, size)
	}
	return make([]byte, size)
}

// runs groups the touched sectors into maximal runs of one seed, for the
// guest to check each run with one step.
func (d disk) runs() []ioOp {
	lbas := make([]uint64, 0, len(d))
	for lba := range d {
		lbas = append(lbas, lba)
	}
	sort.Slice(lbas, func(i, j int) bool { return lbas[i] < lbas[j] })
	var out []ioOp
	for _, lba := range lbas {
		if n := len(out); n > 0 && out[n-1].lba+uint64(out[n-1].count) == lba && out[n-1].seed == d[lba] {
			out[n-1].count++
			continue
		}
		out = append(out, ioOp{lba: lba, count: 1, seed: d[lba]})
	}
	return out
}

// guestIO is the I/O story every backend must pass: writes of one and of
// many sectors at the first, middle and last sectors and scattered between
// them, an overwrite, a flush, a discard and a write-zeroes over written
// data, in units of the disk's sectors (a 512-byte disk also takes 4 KiB
// units, which is how the peer test drives qemu-storage-daemon's).
func guestIO(t *testing.T, sectors uint64) []ioOp {
	last := sectors - 1
	ops := []ioOp{
		{ioWrite, 0, 1, "first"},
		{ioWrite, 1, 7, "seven"},
		{ioWrite, 100, 64, "big"}, // 256 KiB in one request
		{ioWrite, sectors / 2, 3, "middle"},
		{ioWrite, last - 2, 3, "tail"}, // up to the last sector
		{ioWrite, 0, 1, "first-again"},
		{ioWrite, 1000, 64, "to-discard"},
		{ioWrite, 2000, 32, "to-zero"},
	}
	r := mrand.New(mrand.NewPCG(uint64(len(t.Name())), 7))
	for i := 0; i < 24; i++ {
		lba := 3000 + r.Uint64N(sectors-3100)
		ops = append(ops, ioOp{ioWrite, lba, 1 + r.IntN(4), fmt.Sprintf("scatter%d", i)})
	}
	ops = append(ops,
		// Discard and zero a part of a written range and leave the rest,
		// so that an operation that hits the wrong sectors shows.
		ioOp{kind: ioDiscard, lba: 1008, count: 48},
		ioOp{kind: ioZero, lba: 2008, count: 16},
	)
	return ops
}

// ioSteps turns ops into agent steps, flushes, then checks in the guest,
// with O_DIRECT reads, every sector the ops touched.
func ioSteps(ops []ioOp, sectorSize int) []agentproto.Step {
	var steps []agentproto.Step
	for _, op := range ops {
		st := agentproto.Step{Device: dev, SectorSize: sectorSize, LBA: op.lba, Count: op.count, Seed: op.seed}
		switch op.kind {
		case ioWrite:
			st.Op = agentproto.OpWriteSectors
		case ioDiscard:
			st.Op = agentproto.OpDiscard
		case ioZero:
			st.Op = agentproto.OpZeroOut
		}
		steps = append(steps, st)
	}
	steps = append(steps, agentproto.Step{Op: agentproto.OpFlush, Device: dev})
	d := disk{}
	d.apply(ops)
	for _, run := range d.runs() {
		steps = append(steps, agentproto.Step{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: sectorSize,
			LBA: run.lba, Count: run.count, Seed: run.seed})
	}
	return steps
}

// checkWholeDisk compares every sector of got (the whole disk as the host
// reads it) with the model.
func checkWholeDisk(t *testing.T, got []byte, ops []ioOp, sectorSize int) {
	t.Helper()
	d := disk{}
	d.apply(ops)
	bad := 0
	for lba := uint64(0); lba*uint64(sectorSize) < uint64(len(got)); lba++ {
		s := got[lba*uint64(sectorSize) : (lba+1)*uint64(sectorSize)]
		if want := d.sector(lba, sectorSize); !bytes.Equal(s, want) {
			if bad++; bad <= 10 {
				what := "zeroes"
				if d[lba] != "" {
					what = "pattern " + strconv.Quote(d[lba])
				}
				t.Errorf("host reads LBA %d starting %x, want %s starting %x", lba, s[:16], what, want[:16])
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d sectors differ in all", bad)
	}
}

// deviceSteps read what the guest's block layer made of the device.
var deviceSteps = []agentproto.Step{
	{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
	{Op: agentproto.OpRead, Path: "/sys/block/vda/size"},
	{Op: agentproto.OpRead, Path: "/sys/block/vda/queue/logical_block_size"},
	{Op: agentproto.OpRead, Path: "/sys/block/vda/queue/physical_block_size"},
	{Op: agentproto.OpRead, Path: "/sys/block/vda/queue/discard_max_bytes"},
	{Op: agentproto.OpRead, Path: "/sys/block/vda/queue/write_zeroes_max_bytes"},
	{Op: agentproto.OpRead, Path: "/sys/block/vda/queue/write_cache"},
	{Op: agentproto.OpRead, Path: "/sys/block/vda/ro"},
	{Op: agentproto.OpList, Path: "/sys/block/vda/mq"},
}

// geometry is what the guest saw of the device; readGeometry decodes the
// reports of deviceSteps by their place in that list.
type geometry struct {
	sectors512, logical, physical, discardMax, zeroesMax int64
	writeCache                                           string
	ro                                                   string
	queues                                               int
}

func readGeometry(t *testing.T, res *guest.Result) geometry {
	t.Helper()
	num := func(i int) int64 {
		var d agentproto.ReadData
		if err := res.Decode(i, &d); err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(d.Text), 10, 64)
		if err != nil {
			t.Fatalf("step %d: %q: %v", i, d.Text, err)
		}
		return n
	}
	text := func(i int) string {
		var d agentproto.ReadData
		if err := res.Decode(i, &d); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(d.Text)
	}
	var mq []string
	if err := res.Decode(8, &mq); err != nil {
		t.Fatal(err)
	}
	return geometry{sectors512: num(1), logical: num(2), physical: num(3), discardMax: num(4), zeroesMax: num(5),
		writeCache: text(6), ro: text(7), queues: len(mq)}
}

// The guest attaches an nvblk disk with two queues and finds the BTT's
// capacity and block size; every write, the overwrite, the flush, the
// discard and the write-zeroes it makes are, after QEMU and nvblk have
// exited, exactly what the host reads through the BTT, sector by sector
// over the whole disk, and the BTT is consistent.
func TestGuestSeesTheBTTGeometryAndItsIOReachesTheImage(t *testing.T) {
	guestIOOnNvblk(t, 4096)
}

// The same with 512-byte BTT sectors: the guest's block layer works in
// 512-byte blocks, and one 4 KiB page is eight BTT writes.
func TestGuestOnA512ByteSectorBTTSeesItsGeometryAndItsIOReachesTheImage(t *testing.T) {
	guestIOOnNvblk(t, 512)
}

func guestIOOnNvblk(t *testing.T, sectorSize int) {
	img := suite.FormatImage(t, "64M", sectorSize)
	srv := serve(t, img, "--num-queues", "2")
	ops := guestIO(t, img.NumSectors)
	steps := append(append([]agentproto.Step{}, deviceSteps...), ioSteps(ops, img.SectorSize)...)
	res := run(t, machineConfig(srv, 1, 2, steps))

	g := readGeometry(t, res)
	if want := int64(img.NumSectors) * int64(img.SectorSize) / 512; g.sectors512 != want {
		t.Errorf("guest /sys/block/vda/size = %d, want %d (%d sectors of %d bytes)", g.sectors512, want, img.NumSectors, img.SectorSize)
	}
	if g.logical != int64(img.SectorSize) || g.physical != int64(img.SectorSize) {
		t.Errorf("guest logical/physical block size = %d/%d, want the BTT's %d", g.logical, g.physical, img.SectorSize)
	}
	if g.discardMax == 0 || g.zeroesMax == 0 {
		t.Errorf("guest discard_max_bytes %d, write_zeroes_max_bytes %d: the device must offer both, or the ioctls fall back to writes", g.discardMax, g.zeroesMax)
	}
	if g.writeCache != "write back" {
		t.Errorf("guest write_cache = %q, want \"write back\" so that fsync sends FLUSH", g.writeCache)
	}
	// virtio_blk uses no more queues than CPUs: one here, whatever the
	// device offers (two CPUs use both: see the multiqueue test).
	if g.ro != "0" || g.queues != 1 {
		t.Errorf("guest ro = %s with %d hardware queues, want a writable disk with 1", g.ro, g.queues)
	}

	srv.StopClean(t)
	suite.CheckImage(t, img.Path)
	checkWholeDisk(t, suite.ReadImage(t, img, 0, int(img.NumSectors)), ops, img.SectorSize)
}

// The I/O story is a test of the test as much as of nvblk: QEMU's own
// vhost-user-blk export of a raw file must pass it too, with the raw file
// holding exactly the bytes the model says.
func TestTheSameGuestIOPassesAgainstQemuStorageDaemon(t *testing.T) {
	const size = 64 << 20
	raw := t.TempDir() + "/disk.raw"
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	qsd := storageDaemon(t, raw, 2)
	const unit = 4096
	ops := guestIO(t, size/unit)
	steps := append(append([]agentproto.Step{}, deviceSteps...), ioSteps(ops, unit)...)
	res := run(t, machineConfig(qsd, 1, 2, steps))

	g := readGeometry(t, res)
	if g.sectors512 != size/512 || g.queues != 1 || g.ro != "0" {
		t.Errorf("guest sees %d 512-byte sectors, %d queues, ro %s; want %d, 1, 0", g.sectors512, g.queues, g.ro, size/512)
	}
	qsd.StopClean(t)
	got, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	checkWholeDisk(t, got, ops, unit)
}
