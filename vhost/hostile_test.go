package vhost_test

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// bttServer is a Server over a real BTT on a pmem file, as `nvblk serve`
// wires it.
type bttServer struct {
	sock string
	img  string
	dev  *btt.Device
	logs *logtest.Hook
}

type bttServerOpts struct {
	readOnly bool
	// lyingDisk hides the BTT's read-only mode from the virtio-blk layer,
	// standing in for a bug there: the layers below must still refuse.
	lyingDisk bool
}

// lyingDisk claims to be writable whatever the BTT says.
type lyingDisk struct{ *btt.Device }

func (lyingDisk) ReadOnly() bool { return false }

func startBTTServer(t *testing.T, o bttServerOpts) *bttServer {
	t.Helper()
	img := filepath.Join(t.TempDir(), "pmem.img")
	// Put something recognisable on the disk, so a read that returns the
	// wrong sector or a write that lands is visible.
	m, dev := vhosttest.NewBTT(t, img, vhosttest.BTTOptions{Size: 20 << 20, LBASize: 512})
	if err := errors.Join(dev.WriteV(0, [][]byte{pattern(11, 128<<10)}), dev.Close(), m.Close()); err != nil {
		t.Fatal(err)
	}
	m, err := pmem.Open(img, pmem.Options{ReadOnly: o.readOnly})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	dev, err = btt.Open(m, btt.Options{ReadOnly: o.readOnly})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	lg.SetLevel(logrus.WarnLevel)
	hook := logtest.NewLocal(lg)
	var sock string
	if o.lyingDisk {
		// A disk that claims to be writable over a read-only BTT is not
		// what production builds: only the generic Serve can make it.
		_, sock = vhosttest.Serve(t, lyingDisk{dev}, blk.Options{NumQueues: 2, Serial: "hostile"}, vhost.Options{Logger: lg})
	} else {
		// The production wiring: each queue on its own lane.
		_, sock = vhosttest.ServeDevice(t, dev, m.Durability(), blkserve.Config{NumQueues: 2, ReadOnly: o.readOnly,
			Serial: "hostile", Server: vhost.Options{Logger: lg}})
	}
	return &bttServer{sock: sock, img: img, dev: dev, logs: hook}
}

func imageHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path) // the page cache is the MAP_SHARED mapping
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// hostile drives queue 0 of a connected device with hand-made descriptors.
type hostile struct {
	t *testing.T
	d *frontend.Device
	r *frontend.Ring
}

const statusUnset = 0xff

// buf allocates n bytes of guest memory filled with fill.
func (h *hostile) buf(n uint64, fill byte) (uint64, []byte) {
	h.t.Helper()
	gpa, b, err := h.d.Mem.Alloc(n, 16)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := range b {
		b[i] = fill
	}
	return gpa, b
}

// hdr allocates a request header.
func (h *hostile) hdr(typ uint32, sector uint64) uint64 {
	gpa, b := h.buf(16, 0)
	binary.LittleEndian.PutUint32(b[0:], typ)
	binary.LittleEndian.PutUint64(b[8:], sector)
	return gpa
}

// status allocates a status byte, unset.
func (h *hostile) status() (uint64, []byte) { return h.buf(1, statusUnset) }

type desc struct {
	addr  uint64
	n     uint32
	flags uint16
	next  uint16
}

// putTable writes descriptors into an indirect table in guest memory.
func (h *hostile) putTable(ds []desc) (uint64, uint32) {
	gpa, b := h.buf(uint64(16*len(ds)), 0)
	for i, d := range ds {
		e := b[16*i:]
		binary.LittleEndian.PutUint64(e[0:], d.addr)
		binary.LittleEndian.PutUint32(e[8:], d.n)
		binary.LittleEndian.PutUint16(e[12:], d.flags)
		binary.LittleEndian.PutUint16(e[14:], d.next)
	}
	return gpa, uint32(16 * len(ds))
}

// post writes ds as descriptors 0..len(ds)-1, makes 0 the head and kicks.
func (h *hostile) post(ds ...desc) {
	for i, d := range ds {
		h.r.WriteDesc(uint16(i), d.addr, d.n, d.flags, d.next)
	}
	h.r.PushAvail(0)
	h.r.ForceKick()
}

// used waits for the next used element.
func (h *hostile) used() (id, n uint32) {
	h.t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for {
		if id, n, ok := h.r.PopUsed(); ok {
			return id, n
		}
		if time.Now().After(deadline) {
			h.t.Fatal("no used element: the chain was not completed")
		}
		if _, err := h.r.WaitCall(5 * time.Millisecond); err != nil {
			h.t.Fatal(err)
		}
	}
}

// result is what a hostile case must see.
type result struct {
	broken bool   // the ring is corrupt: NEEDS_RESET and no used element
	len    uint32 // used element len
	// status is where a status byte must appear (nil: the chain's status
	// byte, unset, must stay unset) and want its value.
	status, unset []byte
	want          byte
	check         func(t *testing.T) // more to check once the chain completed
}

const (
	dNext  = frontend.DescFNext
	dWrite = frontend.DescFWrite
	dInd   = frontend.DescFIndirect
	far    = uint64(1) << 50 // no guest memory there
)

// TestHostileGuest: a guest that lays out malformed rings and requests gets
// an error (or nothing) for each, the backend writes nothing to the medium
// for them, keeps serving the other queue and the next connection, and
// leaks no fd.
func TestHostileGuest(t *testing.T) {
	s := startBTTServer(t, bttServerOpts{})
	capacity := s.dev.NumSectors() // 512-byte sectors: virtio's unit
	const w = 64                   // a sector the OUT cases would change
	data := pattern(12, 4096)

	tests := []struct {
		name string
		// adjacent moves region 1 right after region 0 in guest memory.
		adjacent bool
		run      func(h *hostile) result
	}{
		{name: "descriptor outside every memory region", run: func(h *hostile) result {
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}, desc{far, 4096, dWrite | dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{unset: sb}
		}},
		{name: "status descriptor outside every memory region", run: func(h *hostile) result {
			dg, _ := h.buf(4096, 0)
			copy(h.mem(dg, 4096), data)
			h.post(desc{h.hdr(virtio.BlkTOut, w), 16, dNext, 1}, desc{dg, 4096, dNext, 2}, desc{far, 1, dWrite, 0})
			return result{}
		}},
		{name: "descriptor wrapping the address space", run: func(h *hostile) result {
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}, desc{^uint64(0) - 100, 4096, dWrite | dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{unset: sb}
		}},
		// Adjacent guest-physical regions (hot-plugged DIMMs) are one
		// range to the driver: a buffer across them is served in two
		// pieces, as libvhost-user does.
		{name: "descriptor straddling two adjacent regions is served", adjacent: true, run: func(h *hostile) result {
			r0 := h.d.Mem.Regions[0]
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}, desc{r0.GuestAddr + r0.Size - 2048, 4096, dWrite | dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{len: 4097, status: sb, want: virtio.BlkSOK}
		}},
		{name: "chain looping back to its head", run: func(h *hostile) result {
			dg, _ := h.buf(4096, 0)
			copy(h.mem(dg, 4096), data)
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTOut, w), 16, dNext, 1}, desc{dg, 4096, dNext, 2}, desc{sg, 1, dWrite | dNext, 0})
			// The status byte was parsed before the loop showed: IOERR.
			return result{len: 1, status: sb, want: virtio.BlkSIOErr}
		}},
		{name: "descriptor chained to itself", run: func(h *hostile) result {
			h.post(desc{h.hdr(virtio.BlkTIn, 0), 16, dNext, 0})
			return result{}
		}},
		{name: "chain longer than the queue", run: func(h *hostile) result {
			ds := []desc{{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}}
			var last []byte
			for i := 1; i < int(h.r.Size); i++ {
				g, b := h.buf(512, statusUnset)
				ds = append(ds, desc{g, 512, dWrite | dNext, uint16(i + 1)})
				last = b
			}
			ds[len(ds)-1].next = 1 // 16 descriptors, and on and on
			h.post(ds...)
			return result{len: 1, status: last[511:], want: virtio.BlkSIOErr}
		}},
		{name: "indirect table longer than the queue is served", run: func(h *hostile) result {
			// virtio asks drivers for no chain longer than the queue but
			// QEMU serves such indirect tables, and so do we.
			ds := []desc{{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}}
			var bufs [][]byte
			for i := 1; i <= 2*int(h.r.Size); i++ {
				g, b := h.buf(512, 0xee)
				ds = append(ds, desc{g, 512, dWrite | dNext, uint16(i + 1)})
				bufs = append(bufs, b)
			}
			sg, sb := h.status()
			ds = append(ds, desc{sg, 1, dWrite, 0})
			tg, tn := h.putTable(ds)
			h.post(desc{tg, tn, dInd, 0})
			check := func(t *testing.T) {
				want := pattern(11, 128<<10)
				for i, b := range bufs {
					if string(b) != string(want[512*i:512*(i+1)]) {
						t.Errorf("segment %d of the long indirect read holds the wrong data", i)
						return
					}
				}
			}
			return result{len: uint32(512*len(bufs)) + 1, status: sb, want: virtio.BlkSOK, check: check}
		}},
		{name: "nested indirect table", run: func(h *hostile) result {
			sg, sb := h.status()
			inner, in := h.putTable([]desc{{sg, 1, dWrite, 0}})
			tg, tn := h.putTable([]desc{{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}, {inner, in, dInd, 0}})
			h.post(desc{tg, tn, dInd, 0})
			return result{unset: sb}
		}},
		{name: "nested indirect table after the status", run: func(h *hostile) result {
			sg, sb := h.status()
			inner, in := h.putTable([]desc{{sg, 1, dWrite, 0}})
			tg, tn := h.putTable([]desc{{h.hdr(virtio.BlkTFlush, 0), 16, dNext, 1}, {sg, 1, dWrite | dNext, 2}, {inner, in, dInd, 0}})
			h.post(desc{tg, tn, dInd, 0})
			return result{len: 1, status: sb, want: virtio.BlkSIOErr}
		}},
		{name: "indirect descriptor inside a chain", run: func(h *hostile) result {
			sg, sb := h.status()
			tg, tn := h.putTable([]desc{{sg, 1, dWrite, 0}})
			h.post(desc{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}, desc{tg, tn, dInd, 0})
			return result{unset: sb}
		}},
		{name: "indirect table of bad length", run: func(h *hostile) result {
			sg, sb := h.status()
			tg, _ := h.putTable([]desc{{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}, {sg, 1, dWrite, 0}})
			h.post(desc{tg, 24, dInd, 0})
			return result{unset: sb}
		}},
		{name: "indirect table of zero length", run: func(h *hostile) result {
			sg, sb := h.status()
			tg, _ := h.putTable([]desc{{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}, {sg, 1, dWrite, 0}})
			h.post(desc{tg, 0, dInd, 0})
			return result{unset: sb}
		}},
		{name: "indirect table outside every memory region", run: func(h *hostile) result {
			h.post(desc{far, 32, dInd, 0})
			return result{}
		}},
		{name: "header too short", run: func(h *hostile) result {
			// No whole header, no request: vhost/blk answers nothing.
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTIn, 0), 8, dNext, 1}, desc{sg, 1, dWrite, 0})
			return result{unset: sb}
		}},
		{name: "status descriptor read-only", run: func(h *hostile) result {
			dg, _ := h.buf(4096, 0)
			copy(h.mem(dg, 4096), data)
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTOut, w), 16, dNext, 1}, desc{dg, 4096, dNext, 2}, desc{sg, 1, 0, 0})
			return result{unset: sb}
		}},
		{name: "write length not a multiple of 512", run: func(h *hostile) result {
			dg, _ := h.buf(1000, 0x5a)
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTOut, w), 16, dNext, 1}, desc{dg, 1000, dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{len: 1, status: sb, want: virtio.BlkSIOErr}
		}},
		{name: "read length not a multiple of 512", run: func(h *hostile) result {
			dg, _ := h.buf(1000, 0)
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTIn, 0), 16, dNext, 1}, desc{dg, 1000, dWrite | dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{len: 1, status: sb, want: virtio.BlkSIOErr}
		}},
		{name: "write at the capacity", run: func(h *hostile) result {
			dg, _ := h.buf(512, 0x5a)
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTOut, capacity), 16, dNext, 1}, desc{dg, 512, dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{len: 1, status: sb, want: virtio.BlkSIOErr}
		}},
		{name: "write straddling the capacity", run: func(h *hostile) result {
			dg, _ := h.buf(1024, 0x5a)
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTOut, capacity-1), 16, dNext, 1}, desc{dg, 1024, dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{len: 1, status: sb, want: virtio.BlkSIOErr}
		}},
		{name: "sector wrapping around 2^64", run: func(h *hostile) result {
			dg, _ := h.buf(4096, 0)
			sg, sb := h.status()
			h.post(desc{h.hdr(virtio.BlkTIn, ^uint64(0)-3), 16, dNext, 1}, desc{dg, 4096, dWrite | dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{len: 1, status: sb, want: virtio.BlkSIOErr}
		}},
		{name: "write zeroes past the capacity", run: func(h *hostile) result {
			sg, sb := h.status()
			seg, b := h.buf(16, 0)
			binary.LittleEndian.PutUint64(b[0:], capacity-8)
			binary.LittleEndian.PutUint32(b[8:], 16)
			h.post(desc{h.hdr(virtio.BlkTWriteZeroes, 0), 16, dNext, 1}, desc{seg, 16, dNext, 2}, desc{sg, 1, dWrite, 0})
			return result{len: 1, status: sb, want: virtio.BlkSIOErr}
		}},
		{name: "unknown request type", run: func(h *hostile) result {
			sg, sb := h.status()
			h.post(desc{h.hdr(0x7777, 0), 16, dNext, 1}, desc{sg, 1, dWrite, 0})
			return result{len: 1, status: sb, want: virtio.BlkSUnsupp}
		}},
		{name: "avail index jumping past the queue size", run: func(h *hostile) result {
			h.r.SetAvailIdx(h.r.Size + 5)
			h.r.ForceKick()
			return result{broken: true}
		}},
		{name: "avail entry naming a head past the table", run: func(h *hostile) result {
			h.r.PushAvail(h.r.Size + 3)
			h.r.ForceKick()
			return result{broken: true}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fdcheck.Check(t)
			before := imageHash(t, s.img)
			d, err := frontend.Connect(s.sock, frontend.Options{
				NumQueues: 2, QueueSize: 16, Indirect: true, Regions: 2, MemSize: 16 << 20, MaxIO: 64 << 10,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if tc.adjacent {
				regs := d.Mem.VhostRegions()
				regs[1].GuestAddr = regs[0].GuestAddr + regs[0].Size
				if _, err := d.Conn.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(regs), []int{d.Mem.FD(), d.Mem.FD()}); err != nil {
					t.Fatal(err)
				}
			}
			h := &hostile{t: t, d: d, r: d.Queues[0].Ring}
			want := tc.run(h)
			if want.broken {
				waitNeedsReset(t, d)
				if n := h.r.UsedIdx(); n != 0 {
					t.Errorf("used idx %d after a corrupt avail ring, want 0", n)
				}
			} else {
				id, n := h.used()
				if id != 0 || n != want.len {
					t.Errorf("used element (id %d, len %d), want (0, %d)", id, n, want.len)
				}
				if want.status != nil && want.status[0] != want.want {
					t.Errorf("status %d, want %d", want.status[0], want.want)
				}
				if want.unset != nil && want.unset[0] != statusUnset {
					t.Errorf("status byte set to %d; want it untouched", want.unset[0])
				}
				if want.check != nil {
					want.check(t)
				}
				if st, err := d.Conn.GetU64(vhostuser.ReqGetStatus); err != nil || st&0x40 != 0 {
					t.Errorf("GET_STATUS %#x, %v: a malformed chain must not break the queue", st, err)
				}
				// The queue itself goes on.
				readBack(t, d.Queues[0], 8)
			}
			// The other queue never noticed.
			readBack(t, d.Queues[1], 16)
			if err := d.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			if imageHash(t, s.img) != before {
				t.Error("the medium changed")
			}
		})
	}
	// And the next front-end is served as if nothing happened.
	d, err := frontend.Connect(s.sock, frontend.Options{NumQueues: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	readBack(t, d.Queues[1], 0)
}

// mem is the frontend's window on guest memory at gpa.
func (h *hostile) mem(gpa, n uint64) []byte {
	b, err := h.d.Mem.Slice(gpa, n)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

// readBack reads 8 sectors at sector through q and checks them against
// what startBTTServer wrote.
func readBack(t *testing.T, q *frontend.Queue, sector uint64) {
	t.Helper()
	got := make([]byte, 4096)
	if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: got}, ioTimeout); err != nil {
		t.Fatalf("queue %d: %v", q.Index, err)
	}
	if string(got) != string(pattern(11, 128<<10)[512*sector:512*sector+4096]) {
		t.Fatalf("queue %d: sector %d reads back wrong", q.Index, sector)
	}
}

func waitNeedsReset(t *testing.T, d *frontend.Device) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for {
		st, err := d.Conn.GetU64(vhostuser.ReqGetStatus)
		if err != nil {
			t.Fatal(err)
		}
		if st&0x40 != 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("DEVICE_NEEDS_RESET not reported")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHostileGuestCannotFloodTheLog: a guest posting malformed chains as fast
// as it can gets them all completed, but only a few warnings per second.
func TestHostileGuestCannotFloodTheLog(t *testing.T) {
	s := startBTTServer(t, bttServerOpts{})
	d, err := frontend.Connect(s.sock, frontend.Options{QueueSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	h := &hostile{t: t, d: d, r: d.Queues[0].Ring}
	start := time.Now()
	const chains = 200
	for i := 0; i < chains; i++ {
		h.post(desc{far, 16, dNext, 1}, desc{far, 1, dWrite, 0})
		if _, n := h.used(); n != 0 {
			t.Fatalf("chain %d: used len %d", i, n)
		}
	}
	elapsed := time.Since(start)
	var lines int
	for _, e := range s.logs.AllEntries() {
		if strings.Contains(e.Message, "malformed") {
			lines++
		}
	}
	// Ten a second, per queue (logBurst), plus the window the
	// test started in.
	if limit := 10 * (int(elapsed/time.Second) + 2); lines == 0 || lines > limit {
		t.Fatalf("%d malformed chains in %v logged %d lines, want 1..%d", chains, elapsed, lines, limit)
	}
}
