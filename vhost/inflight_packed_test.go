package vhost

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/virtq"
)

// flatMem is guest memory of one region at guest address 0, for driving a
// packed virtq.Queue by hand.
type flatMem []byte

func (m flatMem) Translate(gpa, n uint64) ([]byte, error) {
	if gpa >= uint64(len(m)) {
		return nil, errors.New("unmapped")
	}
	end := min(gpa+n, uint64(len(m)))
	return m[gpa:end:end], nil
}

const (
	ringGPA  = 0x1000 // descriptor ring of 4
	drvGPA   = 0x2000
	devGPA   = 0x2004
	ringSize = 4
)

// packedRig is a packed ring of 4 in flatMem with a test driver.
type packedRig struct {
	t     *testing.T
	mem   flatMem
	avail uint16 // next position, index | wrap<<15
}

func newPackedRig(t *testing.T) *packedRig {
	return &packedRig{t: t, mem: make(flatMem, 0x10000), avail: 0x8000}
}

func (g *packedRig) queue() *virtq.Queue {
	q, err := virtq.New(g.mem, virtq.Config{Size: ringSize, DescAddr: ringGPA, AvailAddr: drvGPA, UsedAddr: devGPA, Packed: true})
	if err != nil {
		g.t.Fatal(err)
	}
	return q
}

func (g *packedRig) word(i uint16) *uint32 { return u32At(g.mem, ringGPA+16*int(i)+12) }

// add makes a chain of n descriptors available with buffer id id, its
// buffers at 0x3000+0x100*k.
func (g *packedRig) add(id uint16, n int) {
	head, headWord := g.avail&0x7fff, uint32(0)
	for k := range n {
		i, wrap := g.avail&0x7fff, g.avail&0x8000 != 0
		d := g.mem[ringGPA+16*int(i):]
		binary.LittleEndian.PutUint64(d[0:], 0x3000+0x100*uint64(k))
		binary.LittleEndian.PutUint32(d[8:], 16)
		var f uint16 = 0x8000 // USED: not this lap
		if wrap {
			f = 0x80 // AVAIL
		}
		if k < n-1 {
			f |= 1 // NEXT
		}
		var b [4]byte
		binary.LittleEndian.PutUint16(b[0:], id)
		binary.LittleEndian.PutUint16(b[2:], f)
		w := ne.Uint32(b[:])
		if k == 0 {
			headWord = w
		} else {
			atomic.StoreUint32(g.word(i), w)
		}
		g.avail = advancePos(g.avail, 1, ringSize)
	}
	atomic.StoreUint32(g.word(head), headWord)
}

// take pops the next chain into q and records it in p.
func take(t *testing.T, q *virtq.Queue, iq *inflightQueue) uint16 {
	t.Helper()
	c := q.NewChain()
	if ok, err := q.Next(c); !ok || err != nil {
		t.Fatalf("Next: %v %v", ok, err)
	}
	iq.take(c.Head)
	return c.Head
}

func newPackedTracker(t *testing.T, r *inflightRegion, q *virtq.Queue) *inflightQueue {
	t.Helper()
	iq, err := r.packedQueue(1, q)
	if err != nil || iq == nil {
		t.Fatalf("packedQueue: %v %v", iq, err)
	}
	return iq
}

func TestInflightPackedRegionSizes(t *testing.T) {
	for _, tc := range []struct {
		size uint16
		want uint64
	}{{1, 64}, {2, 128}, {4, 192}, {128, 32 + 32*128 + 32}, {32768, 32*32768 + 64}} {
		if got := packedQueueSize(tc.size); got != tc.want {
			t.Errorf("queue of %d entries: %d bytes, want %d", tc.size, got, tc.want)
		}
	}
	r, _ := newTestRegionFor(t, 2, 4, layoutPacked)
	if r.desc.MmapSize != 2*192 {
		t.Fatalf("GET_INFLIGHT_FD made %d bytes, want room for 2 packed queues of 4", r.desc.MmapSize)
	}
}

// The bytes of queue 1's region after a fresh start, a 2-descriptor chain
// (id 3) and a 1-descriptor chain (id 1) taken and the first completed pin
// every offset of QueueRegionPacked and DescStatePacked (host byte order;
// the build machines are little-endian).
func TestInflightPackedRegionGoldenLayout(t *testing.T) {
	r, _ := newTestRegionFor(t, 2, ringSize, layoutPacked)
	g := newPackedRig(t)
	q := g.queue()
	iq := newPackedTracker(t, r, q)
	if _, _, _, fresh, err := iq.pk.recoverPacked(ringSize); err != nil || !fresh {
		t.Fatalf("fresh region: %v %v", fresh, err)
	}
	g.add(3, 2)
	g.add(1, 1)
	take(t, q, iq)
	take(t, q, iq)
	q.Push(3, 0)
	iq.pushed(3)
	iq.prePublish()
	q.Publish()
	iq.postPublish(q.UsedIdx())

	n := packedQueueSize(ringSize)
	q1 := r.data[n : 2*n]
	entry := func(inflight byte, next, last, num uint16, counter uint64, id, flags uint16, length uint32, addr uint64) string {
		var b [32]byte
		b[0] = inflight
		binary.LittleEndian.PutUint16(b[2:], next)
		binary.LittleEndian.PutUint16(b[4:], last)
		binary.LittleEndian.PutUint16(b[6:], num)
		binary.LittleEndian.PutUint64(b[8:], counter)
		binary.LittleEndian.PutUint16(b[16:], id)
		binary.LittleEndian.PutUint16(b[18:], flags)
		binary.LittleEndian.PutUint32(b[20:], length)
		binary.LittleEndian.PutUint64(b[24:], addr)
		return hex.EncodeToString(b[:])
	}
	want := "0000000000000000" + // features
		"0100" + "0400" + // version 1, desc_num 4
		"0000" + "0000" + // free_head 0, old_free_head 0: chain 3's entries came back
		"0200" + "0200" + // used_idx 2, old_used_idx 2
		"01" + "01" + hex.EncodeToString(make([]byte, 10)) + // wrap counters 1, padding to 32
		entry(0, 1, 1, 2, 0, 3, 0x81, 16, 0x3000) + // chain 3's head: completed, next = its 2nd entry
		entry(0, 3, 0, 0, 0, 3, 0x80, 16, 0x3100) + // chain 3's last, now linking to the free list
		entry(1, 3, 2, 1, 1, 1, 0x80, 16, 0x3000) + // chain 1: in flight, counter 1
		entry(0, 4, 0, 0, 0, 0, 0, 0, 0) + // never used; next 4 ends the list
		hex.EncodeToString(make([]byte, int(n)-32-4*32))
	if got := hex.EncodeToString(q1); got != want {
		t.Fatalf("queue 1 region\ngot  %s\nwant %s", got, want)
	}
}

// crashAfter takes chains 3 (2 descriptors) and 1 (1 descriptor), completes
// 3 as far as step says, and returns a new queue and tracker on the same
// ring and region, as the next back-end would have them.
func crashAfter(t *testing.T, step string) (*virtq.Queue, *inflightQueue, *packedRig) {
	t.Helper()
	r, again := newTestRegionFor(t, 2, ringSize, layoutPacked)
	g := newPackedRig(t)
	q := g.queue()
	iq := newPackedTracker(t, r, q)
	iq.pk.recoverPacked(ringSize)
	g.add(3, 2)
	g.add(1, 1)
	take(t, q, iq)
	take(t, q, iq)
	q.Push(3, 0)
	iq.pushed(3)
	if step != "pushed" {
		iq.prePublish()
	}
	if step == "published" || step == "committed" {
		q.Publish()
	}
	if step == "committed" {
		iq.postPublish(q.UsedIdx())
	}
	q2 := g.queue()
	return q2, newPackedTracker(t, again, q2), g
}

func TestInflightPackedRecoveryAppliesTheReconnectRules(t *testing.T) {
	for _, tc := range []struct {
		step      string
		ids       string
		used      uint16
		lastAvail uint16
	}{
		// Nothing of the batch stored: both chains were in flight.
		{"pushed", "[3 1]", 0x8000, 0x8003},
		// Stored but not published: rolled back, both resubmitted.
		{"prepublished", "[3 1]", 0x8000, 0x8003},
		// Published, not committed: the update is committed now.
		{"published", "[1]", 0x8002, 0x8003},
		{"committed", "[1]", 0x8002, 0x8003},
	} {
		t.Run(tc.step, func(t *testing.T) {
			q, iq, _ := crashAfter(t, tc.step)
			ids, used, avail, fresh, err := iq.pk.recoverPacked(ringSize)
			if err != nil || fresh || fmt.Sprint(ids) != tc.ids || used != tc.used || avail != tc.lastAvail {
				t.Fatalf("recovered %v used %#x avail %#x fresh %v err %v; want %s %#x %#x", ids, used, avail, fresh, err, tc.ids, tc.used, tc.lastAvail)
			}
			// The chains are registered with the new queue, and it
			// completes them from the recorded descriptors.
			q.SetUsedIdx(used)
			q.SetLastAvail(avail)
			c := q.NewChain()
			for _, id := range ids {
				if err := q.ChainAt(id, c); err != nil || len(c.Segments) == 0 {
					t.Fatalf("ChainAt(%d): %v", id, err)
				}
				q.Push(id, 0)
				iq.pushed(id)
			}
			iq.prePublish()
			q.Publish()
			iq.postPublish(q.UsedIdx())
			if q.UsedIdx() != 0x8003 || q.Err() != nil {
				t.Fatalf("after resubmitting: used %#x err %v", q.UsedIdx(), q.Err())
			}
			if again, _, _, _, err := iq.pk.recoverPacked(ringSize); err != nil || len(again) != 0 {
				t.Fatalf("after completing everything the region still has %v in flight (%v)", again, err)
			}
		})
	}
}

func TestInflightPackedRecoveryRefusesHostileRegions(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(b []byte) // queue 1's region, after two chains taken
	}{
		{"unknown version", func(b []byte) { ne.PutUint16(b[8:], 2) }},
		{"desc_num not the queue size", func(b []byte) { ne.PutUint16(b[10:], 8) }},
		{"free list loops", func(b []byte) { ne.PutUint16(b[32+32*3+2:], 3) }},
		{"used index past the ring", func(b []byte) { ne.PutUint16(b[16:], 9); ne.PutUint16(b[18:], 9) }},
		{"chain of no descriptors", func(b []byte) { ne.PutUint16(b[32+6:], 0) }},
		{"chain longer than the ring", func(b []byte) { ne.PutUint16(b[32+6:], 5) }},
		{"chain whose last entry is not its end", func(b []byte) { ne.PutUint16(b[32+4:], 3) }},
		{"chain running into the free list", func(b []byte) { ne.PutUint16(b[32+2:], 3) }},
		{"two chains sharing an entry", func(b []byte) {
			b[32+32*1] = 1 // entry 1, chain 3's second, made a head of a chain of 1
			ne.PutUint16(b[32+32*1+4:], 1)
			ne.PutUint16(b[32+32*1+6:], 1)
		}},
		{"buffer id past the ring", func(b []byte) { ne.PutUint16(b[32+32*2+16:], 7) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, again := newTestRegionFor(t, 2, ringSize, layoutPacked)
			g := newPackedRig(t)
			q := g.queue()
			iq := newPackedTracker(t, r, q)
			iq.pk.recoverPacked(ringSize)
			g.add(3, 2)
			g.add(1, 1)
			take(t, q, iq)
			take(t, q, iq)
			n := packedQueueSize(ringSize)
			tc.spoil(r.data[n : 2*n])
			q2 := g.queue()
			if _, _, _, _, err := newPackedTracker(t, again, q2).pk.recoverPacked(ringSize); !errors.Is(err, ErrBadInflight) {
				t.Fatalf("recover: %v, want ErrBadInflight", err)
			}
		})
	}
}

func TestInflightPackedRefusesARegionSizedForSplitRings(t *testing.T) {
	fd, err := newMemfd(2 * inflightQueueSize(ringSize))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	r, err := mapInflightRegion(vhostuser.Inflight{MmapSize: 2 * inflightQueueSize(ringSize), NumQueues: 2, QueueSize: ringSize}, fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.unmap() })
	if _, err := r.packedQueue(1, newPackedRig(t).queue()); !errors.Is(err, ErrBadInflight) {
		t.Fatalf("packedQueue on a split-sized region: %v", err)
	}
}
