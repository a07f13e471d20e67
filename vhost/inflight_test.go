package vhost

import (
	"encoding/binary"
	"encoding/hex"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/nvblk/nvblk/vhostuser"
	"golang.org/x/sys/unix"
)

// newTestRegion allocates a region the way GET_INFLIGHT_FD does and maps
// it a second time, as SET_INFLIGHT_FD in the next back-end would.
func newTestRegion(t *testing.T, queues, size uint16) (*inflightRegion, *inflightRegion) {
	t.Helper()
	return newTestRegionFor(t, queues, size, layoutSplit)
}

// newTestRegionFor is newTestRegion for a front-end whose features say
// layout.
func newTestRegionFor(t *testing.T, queues, size uint16, layout inflightLayout) (*inflightRegion, *inflightRegion) {
	t.Helper()
	r, fd, err := newInflightRegion(queues, size, layout)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	again, err := mapInflightRegion(r.desc, fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.unmap(); again.unmap() })
	return r, again
}

// TestARegionForSplitRingsHasTheSplitLayoutAndItsQueuesWhereItsSizeSays:
// once the features say split (QEMU sets them before GET_INFLIGHT_FD), each
// queue's region is the split layout's size, as a reader of the region
// that divides it among its queues expects (a back-end after us, the
// reconnect test); one made before they say has room for either layout,
// and its queues sit at that larger stride.
func TestARegionForSplitRingsHasTheSplitLayoutAndItsQueuesWhereItsSizeSays(t *testing.T) {
	for _, c := range []struct {
		layout inflightLayout
		per    uint64
	}{{layoutSplit, 2112}, {layoutPacked, 4160}, {layoutUnknown, 4160}} {
		r, fd, err := newInflightRegion(2, 128, c.layout)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		if r.desc.MmapSize != 2*c.per {
			t.Errorf("layout %d: %d bytes, want %d", c.layout, r.desc.MmapSize, 2*c.per)
		}
		q1 := r.queue(1)
		atomic.StoreUint32(q1.verNum, 0xabcd)
		if got := binary.NativeEndian.Uint32(r.data[c.per+inflightOffVersion:]); got != 0xabcd {
			t.Errorf("layout %d: queue 1's header is not at byte %d", c.layout, c.per)
		}
		r.unmap()
	}
}

func TestInflightRegionSizes(t *testing.T) {
	for _, tc := range []struct {
		size uint16
		want uint64
	}{{1, 64}, {2, 64}, {4, 128}, {128, 16 + 16*128 + 48}, {256, 4160}, {32768, 16*32768 + 64}} {
		if got := inflightQueueSize(tc.size); got != tc.want {
			t.Errorf("queue of %d entries: %d bytes, want %d", tc.size, got, tc.want)
		}
	}
	r, _ := newTestRegionFor(t, 2, 128, layoutUnknown)
	// Room for either layout: packed, 32+32*128 rounded to 64, is larger.
	if r.desc.MmapSize != 2*4160 || r.desc.MmapOffset != 0 || r.desc.NumQueues != 2 || r.desc.QueueSize != 128 {
		t.Fatalf("GET_INFLIGHT_FD reply %+v", r.desc)
	}
	if _, _, err := newInflightRegion(0, 128, layoutSplit); err == nil {
		t.Fatal("a region for no queues was made")
	}
	if _, err := mapInflightRegion(vhostuser.Inflight{MmapSize: 100, NumQueues: 1, QueueSize: 128}, -1); err == nil {
		t.Fatal("a region smaller than its queues was accepted")
	}
}

// The bytes of queue 1's region after a fresh start, two requests taken and
// one completed pin every offset of QueueRegionSplit and DescStateSplit
// (host byte order; the build machines are little-endian).
func TestInflightRegionGoldenLayout(t *testing.T) {
	r, _ := newTestRegion(t, 2, 4)
	iq := r.queue(1)
	if heads, err := iq.recoverRing(7, 4); err != nil || len(heads) != 0 {
		t.Fatalf("fresh region: %v %v", heads, err)
	}
	iq.take(2) // counter 0
	iq.take(0) // counter 1
	iq.pushed(2)
	iq.prePublish()
	iq.postPublish(8)

	q1 := r.data[inflightQueueSize(4) : 2*inflightQueueSize(4)]
	want := "0000000000000000" + // features
		"0100" + "0400" + // version 1, desc_num 4
		"0200" + "0800" + // last_batch_head 2, used_idx 8
		"01" + "0000000000" + "0000" + "0100000000000000" + // desc[0]: in flight, counter 1
		"00" + "0000000000" + "0000" + "0000000000000000" + // desc[1]: never taken
		"00" + "0000000000" + "0000" + "0000000000000000" + // desc[2]: completed; next = old head 0
		"00" + "0000000000" + "0000" + "0000000000000000" + // desc[3]
		hex.EncodeToString(make([]byte, 128-16-4*16)) // padding to 64 bytes
	if got := hex.EncodeToString(q1); got != want {
		t.Fatalf("queue 1 region\ngot  %s\nwant %s", got, want)
	}
	if q0 := r.data[:inflightQueueSize(4)]; hex.EncodeToString(q0) != hex.EncodeToString(make([]byte, len(q0))) {
		t.Fatal("queue 0's region was written by queue 1")
	}
	if r.queue(2) != nil {
		t.Fatal("a tracker for a queue the region does not describe")
	}
}

// The spec's recovery rules, each from the state a back-end leaves when it
// dies at that point of its sequence.
func TestInflightRecovery(t *testing.T) {
	t.Run("died with requests taken: resubmitted in the order taken", func(t *testing.T) {
		r, next := newTestRegion(t, 1, 8)
		iq := r.queue(0)
		iq.recoverRing(0, 8)
		for _, h := range []uint16{5, 1, 7, 3} {
			iq.take(h)
		}
		iq.pushed(5) // written to the used ring, never published
		heads, err := next.queue(0).recoverRing(0, 8)
		if err != nil || !slices.Equal(heads, []uint16{5, 1, 7, 3}) {
			t.Fatalf("resubmit %v, %v; want [5 1 7 3]", heads, err)
		}
	})
	t.Run("died after used.idx, before the batch was cleared: the batch is done", func(t *testing.T) {
		r, next := newTestRegion(t, 1, 8)
		iq := r.queue(0)
		iq.recoverRing(100, 8)
		for _, h := range []uint16{4, 6, 2} {
			iq.take(h)
		}
		iq.pushed(4)
		iq.pushed(6)
		iq.prePublish()
		// used.idx is now 102 in the ring; postPublish never ran.
		iq2 := next.queue(0)
		heads, err := iq2.recoverRing(102, 8)
		if err != nil || !slices.Equal(heads, []uint16{2}) {
			t.Fatalf("resubmit %v, %v; want [2]", heads, err)
		}
		if _, used := splitHalves(*iq2.batch); used != 102 {
			t.Fatalf("used_idx %d after recovery, want 102", used)
		}
		if iq2.counter != 3 {
			t.Fatalf("counter resumes at %d, want 3", iq2.counter)
		}
	})
	t.Run("died before used.idx: the batch is resubmitted", func(t *testing.T) {
		r, next := newTestRegion(t, 1, 8)
		iq := r.queue(0)
		iq.recoverRing(0xfffe, 8)
		iq.take(0)
		iq.take(1)
		iq.pushed(0)
		iq.pushed(1)
		iq.prePublish()
		heads, err := next.queue(0).recoverRing(0xfffe, 8)
		if err != nil || !slices.Equal(heads, []uint16{0, 1}) {
			t.Fatalf("resubmit %v, %v; want [0 1]", heads, err)
		}
	})
	t.Run("completed batches across a wrapping used index leave nothing", func(t *testing.T) {
		r, next := newTestRegion(t, 1, 4)
		iq := r.queue(0)
		iq.recoverRing(0xffff, 4)
		for i := range 6 {
			h := uint16(i % 4)
			iq.take(h)
			iq.pushed(h)
			iq.prePublish()
			iq.postPublish(0xffff + uint16(i) + 1)
		}
		heads, err := next.queue(0).recoverRing(5, 4)
		if err != nil || len(heads) != 0 {
			t.Fatalf("resubmit %v, %v; want none", heads, err)
		}
	})
	t.Run("a region that does not fit the ring is refused", func(t *testing.T) {
		r, next := newTestRegion(t, 1, 4)
		r.queue(0).recoverRing(0, 4)
		if _, err := next.queue(0).recoverRing(0, 8); err == nil {
			t.Fatal("ring of 8 entries on a region of 4 accepted")
		}
		if _, err := next.queue(0).recoverRing(9, 4); err == nil {
			t.Fatal("used idx 9 entries past the region's accepted")
		}
	})
}
