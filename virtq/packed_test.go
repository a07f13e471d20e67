package virtq

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// request is a virtio-blk-shaped chain: header, data, status.
func (d *packedDriver) request(data uint32) []desc {
	return []desc{
		{addr: d.alloc(16, 1), len: 16},
		{addr: d.alloc(uint64(data), 2), len: data, flags: descFWrite},
		{addr: d.alloc(1, 3), len: 1, flags: descFWrite},
	}
}

func mustNext(t *testing.T, q *Queue, c *Chain) {
	t.Helper()
	ok, err := q.Next(c)
	if !ok || err != nil {
		t.Fatalf("Next: ok=%v err=%v", ok, err)
	}
}

func TestPackedRingTakesAChainAndHandsBackItsBufferID(t *testing.T) {
	d := newPackedDriver(t, 8)
	q := d.queue(false, false)
	c := q.NewChain()
	if ok, err := q.Next(c); ok || err != nil {
		t.Fatalf("empty ring: ok=%v err=%v", ok, err)
	}
	d.add(5, d.request(512)...)
	mustNext(t, q, c)
	if c.Head != 5 || len(c.Segments) != 3 {
		t.Fatalf("head %d, %d segments; want buffer id 5, 3 segments", c.Head, len(c.Segments))
	}
	for i, w := range []struct {
		n    int
		fill byte
		w    bool
	}{{16, 1, false}, {512, 2, true}, {1, 3, true}} {
		s := c.Segments[i]
		if len(s.Buf) != w.n || s.Writable != w.w || !bytes.Equal(s.Buf, bytes.Repeat([]byte{w.fill}, w.n)) {
			t.Fatalf("segment %d: %d bytes writable=%v, want %d bytes of %d writable=%v", i, len(s.Buf), s.Writable, w.n, w.fill, w.w)
		}
	}
	if ok, _ := q.Next(c); ok {
		t.Fatal("one chain made available, two taken")
	}
	q.Push(c.Head, 513)
	if _, _, _, ok := d.popUsed(); ok {
		t.Fatal("used descriptor visible before Publish")
	}
	q.Publish()
	id, n, flags, ok := d.popUsed()
	if !ok || id != 5 || n != 513 || flags&descFWrite == 0 {
		t.Fatalf("used: id %d len %d flags %#x ok %v; want id 5, len 513, WRITE", id, n, flags, ok)
	}
	if q.LastAvail() != wrapBit|3 || q.UsedIdx() != wrapBit|3 {
		t.Fatalf("last avail %#x used %#x, want both %#x", q.LastAvail(), q.UsedIdx(), wrapBit|3)
	}
}

func TestPackedRingUsedDescriptorWithNothingWrittenHasNoWriteFlag(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(false, false)
	c := q.NewChain()
	d.add(1, desc{addr: d.alloc(16, 0), len: 16})
	mustNext(t, q, c)
	q.Push(c.Head, 0)
	q.Publish()
	if _, _, flags, ok := d.popUsed(); !ok || flags&descFWrite != 0 {
		t.Fatalf("flags %#x ok %v, want used without WRITE", flags, ok)
	}
}

func TestPackedRingFollowsTheWrapCountersOverManyLaps(t *testing.T) {
	// Chains of 3 on a ring of 4: every chain after the first straddles
	// the ring's end or starts a new lap somewhere else.
	d := newPackedDriver(t, 4)
	q := d.queue(true, false)
	c := q.NewChain()
	for i := range 20 {
		id := uint16(i % 4)
		d.add(id, d.request(8)...)
		mustNext(t, q, c)
		if c.Head != id || len(c.Segments) != 3 {
			t.Fatalf("chain %d: head %d, %d segments", i, c.Head, len(c.Segments))
		}
		q.Push(c.Head, 9)
		q.Publish()
		if got, _, _, ok := d.popUsed(); !ok || got != id {
			t.Fatalf("chain %d: used id %d ok %v", i, got, ok)
		}
		if q.LastAvail() != d.avail.encode() || q.UsedIdx() != d.used.encode() {
			t.Fatalf("chain %d: device at %#x/%#x, driver at %#x/%#x", i, q.LastAvail(), q.UsedIdx(), d.avail.encode(), d.used.encode())
		}
	}
}

func TestPackedRingCompletedOutOfOrderWritesUsedDescriptorsInCompletionOrder(t *testing.T) {
	d := newPackedDriver(t, 8)
	q := d.queue(false, false)
	a, b := q.NewChain(), q.NewChain()
	d.add(6, d.request(8)...)                   // 3 descriptors at 0..2
	d.add(2, desc{addr: d.alloc(4, 0), len: 4}) // 1 descriptor at 3
	mustNext(t, q, a)
	mustNext(t, q, b)
	q.Push(b.Head, 0) // written at 0, skips 1
	q.Push(a.Head, 9) // written at 1, skips 3
	q.Publish()
	if id, _, _, ok := d.popUsed(); !ok || id != 2 {
		t.Fatalf("first used id %d ok %v, want 2", id, ok)
	}
	if id, n, _, ok := d.popUsed(); !ok || id != 6 || n != 9 {
		t.Fatalf("second used id %d len %d ok %v, want 6 and 9", id, n, ok)
	}
	if q.UsedIdx() != wrapBit|4 || d.used.encode() != wrapBit|4 {
		t.Fatalf("used at %#x (driver %#x), want %#x", q.UsedIdx(), d.used.encode(), wrapBit|4)
	}
}

func TestPackedRingPublishesABatchByStoringItsFirstFlagsLast(t *testing.T) {
	d := newPackedDriver(t, 8)
	q := d.queue(false, false)
	c := q.NewChain()
	for id := range uint16(3) {
		d.add(id, desc{addr: d.alloc(4, 0), len: 4})
	}
	for range 3 {
		mustNext(t, q, c)
		q.Push(c.Head, 0)
	}
	// The second and third are written; the first is held.
	if f0, f1 := getHalf(atomic.LoadUint32(d.word(0)), 2), getHalf(atomic.LoadUint32(d.word(1)), 2); f0&descFUsed != 0 || f1&descFUsed == 0 {
		t.Fatalf("before Publish: flags %#x %#x, want the first still available, the second used", f0, f1)
	}
	if _, _, _, ok := d.popUsed(); ok {
		t.Fatal("driver sees part of the batch before Publish")
	}
	q.Publish()
	for want := range uint16(3) {
		if id, _, _, ok := d.popUsed(); !ok || id != want {
			t.Fatalf("used id %d ok %v, want %d", id, ok, want)
		}
	}
	if q.Publish() {
		t.Fatal("Publish with nothing pushed notified")
	}
}

func TestPackedRingIndirectTableIsWalkedInTableOrder(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(false, true)
	c := q.NewChain()
	tbl := d.alloc(3*descSize, 0)
	// NEXT and an id in the table are reserved and ignored (§2.8.7).
	d.writeTable(tbl,
		desc{addr: d.alloc(16, 1), len: 16, flags: descFNext, next: 77},
		desc{addr: d.alloc(64, 2), len: 64, flags: descFWrite},
		desc{addr: d.alloc(1, 3), len: 1, flags: descFWrite | descFIndirect})
	d.add(3, desc{addr: tbl, len: 3 * descSize, flags: descFIndirect | descFWrite})
	mustNext(t, q, c)
	if c.Head != 3 || len(c.Segments) != 3 || c.Segments[0].Writable || !c.Segments[1].Writable || len(c.Segments[1].Buf) != 64 {
		t.Fatalf("head %d segments %+v", c.Head, c.Segments)
	}
	q.Push(c.Head, 65)
	q.Publish()
	if id, _, _, ok := d.popUsed(); !ok || id != 3 {
		t.Fatalf("used id %d ok %v", id, ok)
	}
}

// TestPackedRingRefusesHostileRings: a chain whose extent is unknowable
// breaks the ring; one whose buffers are bad is completed and the queue
// goes on with the next chain.
func TestPackedRingRefusesHostileRings(t *testing.T) {
	const size = 4
	tests := []struct {
		name     string
		indirect bool
		setup    func(d *packedDriver)
		want     error // ErrBroken or ErrBadChain
		wantHead uint16
	}{
		{"chain longer than the ring", false, func(d *packedDriver) {
			for i := range uint16(size) {
				d.writeRaw(i, d.alloc(4, 0), 4, 0, availFlags(descFNext, true))
			}
		}, ErrBroken, 0},
		{"descriptor in the chain not available", false, func(d *packedDriver) {
			d.writeRaw(1, d.alloc(4, 0), 4, 1, 0) // never made available
			d.writeRaw(0, d.alloc(4, 0), 4, 0, availFlags(descFNext, true))
		}, ErrBroken, 0},
		{"descriptor in the chain available in the other lap", false, func(d *packedDriver) {
			d.writeRaw(1, d.alloc(4, 0), 4, 1, availFlags(0, false))
			d.writeRaw(0, d.alloc(4, 0), 4, 0, availFlags(descFNext, true))
		}, ErrBroken, 0},
		{"buffer id past the ring", false, func(d *packedDriver) {
			d.add(size, desc{addr: d.alloc(4, 0), len: 4})
		}, ErrBroken, 0},
		{"buffer id 0xffff", false, func(d *packedDriver) {
			d.add(0xffff, desc{addr: d.alloc(4, 0), len: 4})
		}, ErrBroken, 0},
		{"readable after writable", false, func(d *packedDriver) {
			d.add(2, desc{addr: d.alloc(4, 0), len: 4, flags: descFWrite}, desc{addr: d.alloc(4, 0), len: 4})
		}, ErrBadChain, 2},
		{"buffer unmapped", false, func(d *packedDriver) {
			d.add(1, desc{addr: bufBase + bufLen, len: 4})
		}, ErrBadChain, 1},
		{"buffer runs into a hole", false, func(d *packedDriver) {
			d.add(1, desc{addr: edgeBase + edgeLen - 4, len: 8})
		}, ErrBadChain, 1},
		{"indirect without the feature", false, func(d *packedDriver) {
			d.add(3, desc{addr: d.alloc(descSize, 0), len: descSize, flags: descFIndirect})
		}, ErrBadChain, 3},
		{"indirect descriptor inside a chain", true, func(d *packedDriver) {
			d.add(3, desc{addr: d.alloc(4, 0), len: 4}, desc{addr: d.alloc(descSize, 0), len: descSize, flags: descFIndirect})
		}, ErrBadChain, 3},
		{"indirect table of length 0", true, func(d *packedDriver) {
			d.add(3, desc{addr: d.alloc(descSize, 0), len: 0, flags: descFIndirect})
		}, ErrBadChain, 3},
		{"indirect table length not a multiple of 16", true, func(d *packedDriver) {
			d.add(3, desc{addr: d.alloc(descSize, 0), len: 24, flags: descFIndirect})
		}, ErrBadChain, 3},
		{"indirect table larger than MaxSize entries", true, func(d *packedDriver) {
			d.add(3, desc{addr: bufBase, len: (MaxSize + 1) * descSize, flags: descFIndirect})
		}, ErrBadChain, 3},
		{"indirect table unmapped", true, func(d *packedDriver) {
			d.add(3, desc{addr: bufBase + bufLen, len: descSize, flags: descFIndirect})
		}, ErrBadChain, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newPackedDriver(t, size)
			q := d.queue(false, tt.indirect)
			c := q.NewChain()
			tt.setup(d)
			ok, err := q.Next(c)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Next: ok=%v err=%v, want %v", ok, err, tt.want)
			}
			if tt.want == ErrBroken {
				if ok || !errors.Is(q.Err(), ErrBroken) {
					t.Fatalf("ok=%v Err=%v after a broken ring", ok, q.Err())
				}
				if ok, err := q.Next(c); ok || !errors.Is(err, ErrBroken) {
					t.Fatalf("Next after breaking: ok=%v err=%v", ok, err)
				}
				return
			}
			if !ok || c.Head != tt.wantHead {
				t.Fatalf("bad chain: ok=%v head %d, want the chain consumed with id %d", ok, c.Head, tt.wantHead)
			}
			q.Push(c.Head, 0)
			q.Publish()
			if id, _, _, ok := d.popUsed(); !ok || id != tt.wantHead {
				t.Fatalf("bad chain's used id %d ok %v", id, ok)
			}
			d.add(0, desc{addr: d.alloc(4, 9), len: 4})
			if ok, err := q.Next(c); !ok || err != nil || c.Head != 0 {
				t.Fatalf("chain after the bad one: ok=%v err=%v head %d", ok, err, c.Head)
			}
		})
	}
}

func TestPackedRingRefusesABufferIDStillInFlight(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(false, false)
	c := q.NewChain()
	d.add(1, desc{addr: d.alloc(4, 0), len: 4})
	d.add(1, desc{addr: d.alloc(4, 0), len: 4})
	mustNext(t, q, c)
	if ok, err := q.Next(c); ok || !errors.Is(err, ErrBroken) {
		t.Fatalf("second chain with id 1 in flight: ok=%v err=%v", ok, err)
	}
}

func TestPackedRingRefusesMoreDescriptorsThanTheRingReturned(t *testing.T) {
	// A 4-descriptor ring with 3 taken: a driver that makes the slots of
	// the taken chains available again (a whole new lap) is not using
	// the ring, it is overwriting it.
	d := newPackedDriver(t, 4)
	q := d.queue(false, false)
	c := q.NewChain()
	d.add(0, desc{addr: d.alloc(4, 0), len: 4}, desc{addr: d.alloc(4, 0), len: 4}, desc{addr: d.alloc(4, 0), len: 4})
	mustNext(t, q, c)
	d.add(1, desc{addr: d.alloc(4, 0), len: 4}, desc{addr: d.alloc(4, 0), len: 4})
	if ok, err := q.Next(c); ok || !errors.Is(err, ErrBroken) {
		t.Fatalf("5 descriptors in flight on a ring of 4: ok=%v err=%v", ok, err)
	}
}

func TestPackedRingPushOfAnIDNotInFlightStopsTheQueue(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(false, false)
	q.Push(2, 0)
	if !errors.Is(q.Err(), ErrBroken) {
		t.Fatalf("Err %v after pushing an id never taken", q.Err())
	}
	q.Push(9, 0) // past the ring: no panic
}

func TestPackedRingSurvivesADriverRewritingFlagsMidChain(t *testing.T) {
	// The driver keeps flipping NEXT and the wrap bits of every
	// descriptor while the device takes chains: each one is read once,
	// so whatever the device sees is bounded and consistent.
	d := newPackedDriver(t, 8)
	q := d.queue(true, true)
	c := q.NewChain()
	for i := range uint16(8) {
		d.writeRaw(i, d.alloc(64, 0), 64, i%8, availFlags(descFNext, true))
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := uint32(0); !stop.Load(); n++ {
			i := uint16(n % 8)
			flags := []uint16{availFlags(descFNext, true), availFlags(0, true), availFlags(descFNext, false), descFIndirect | descFAvail}[n/8%4]
			atomic.StoreUint32(d.word(i), setHalf(setHalf(0, 0, uint16(n%11)), 2, flags))
		}
	}()
	for range 2000 {
		ok, err := q.Next(c)
		if errors.Is(err, ErrBroken) {
			break
		}
		if ok {
			if c.Head >= 8 || len(c.Segments) > segmentsPerEntry*8 {
				t.Fatalf("head %d with %d segments", c.Head, len(c.Segments))
			}
			q.Push(c.Head, 0)
			q.Publish()
		}
	}
	stop.Store(true)
	wg.Wait()
}

func TestPackedRingNotifiesAsTheDriverEventSuppressionSays(t *testing.T) {
	tests := []struct {
		name     string
		eventIdx bool
		flags    uint16
		offWrap  func(at ringPos) uint16 // at: the used position before the batch
		notify   bool
	}{
		{"enable", false, eventFlagsEnable, nil, true},
		{"disable", false, eventFlagsDisable, nil, false},
		{"disable with event idx", true, eventFlagsDisable, nil, false},
		{"reserved flags value notifies", false, 3, nil, true},
		{"desc without event idx notifies", false, eventFlagsDesc, func(at ringPos) uint16 { return at.encode() + 100 }, true},
		{"desc at the batch's first descriptor", true, eventFlagsDesc, func(at ringPos) uint16 { return at.encode() }, true},
		{"desc at a skipped descriptor of the batch", true, eventFlagsDesc, func(at ringPos) uint16 { return at.encode() + 1 }, true},
		{"desc just past the batch", true, eventFlagsDesc, func(at ringPos) uint16 { at.advance(2, 4); return at.encode() }, false},
		{"desc one lap behind", true, eventFlagsDesc, func(at ringPos) uint16 { return at.encode() ^ wrapBit }, false},
		{"desc past the ring", true, eventFlagsDesc, func(at ringPos) uint16 { return at.encode()&wrapBit | 0x7000 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newPackedDriver(t, 4)
			q := d.queue(tt.eventIdx, false)
			c := q.NewChain()
			// A first round trip, so that the position is known to the
			// driver (the first publish after a reset always notifies
			// under DESC).
			d.add(0, desc{addr: d.alloc(4, 0), len: 4})
			mustNext(t, q, c)
			q.Push(c.Head, 0)
			q.Publish()
			d.popUsed()
			// Then a 2-descriptor chain from position 1.
			at := decodePos(q.UsedIdx())
			var ow uint16
			if tt.offWrap != nil {
				ow = tt.offWrap(at)
			}
			d.setDriverEvent(ow, tt.flags)
			d.add(1, desc{addr: d.alloc(4, 0), len: 4}, desc{addr: d.alloc(4, 0), len: 4})
			mustNext(t, q, c)
			q.Push(c.Head, 0)
			if got := q.Publish(); got != tt.notify {
				t.Fatalf("Publish notified %v, want %v (off_wrap %#x, used from %#x)", got, tt.notify, ow, at.encode())
			}
		})
	}
}

func TestPackedRingDescEventAcrossTheRingEnd(t *testing.T) {
	// A batch from 3 over 3 descriptors covers 3, then 0 and 1 of the next
	// lap; the driver asks for 1 in that lap.
	if !packedNeedEvent(1, ringPos{idx: 3, wrap: true}, 3, 4) {
		t.Fatal("event in the next lap, inside the batch: not notified")
	}
	if packedNeedEvent(wrapBit|1, ringPos{idx: 3, wrap: true}, 3, 4) {
		t.Fatal("event in this lap, behind the batch: notified")
	}
	if packedNeedEvent(2, ringPos{idx: 3, wrap: true}, 3, 4) {
		t.Fatal("event in the next lap, past the batch: notified")
	}
}

func TestPackedRingFirstPublishAfterSettingThePositionNotifies(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(true, false)
	c := q.NewChain()
	d.setDriverEvent(wrapBit|3, eventFlagsDesc) // not covered by the batch
	d.add(0, desc{addr: d.alloc(4, 0), len: 4})
	mustNext(t, q, c)
	q.Push(c.Head, 0)
	if !q.Publish() {
		t.Fatal("first publish of a new queue did not notify: a predecessor's lost interrupt stays lost")
	}
}

func TestPackedRingKickSuppressionWritesTheDeviceArea(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		d := newPackedDriver(t, 4)
		q := d.queue(eventIdx, false)
		q.DisableKicks()
		if _, f := d.deviceEvent(); f != eventFlagsDisable {
			t.Fatalf("event idx %v: device flags %d after DisableKicks, want DISABLE", eventIdx, f)
		}
		if q.EnableKicks() {
			t.Fatalf("event idx %v: EnableKicks reported work on an empty ring", eventIdx)
		}
		ow, f := d.deviceEvent()
		switch {
		case eventIdx && (f != eventFlagsDesc || ow != wrapBit|0):
			t.Fatalf("device area %#x/%d, want DESC at %#x", ow, f, wrapBit)
		case !eventIdx && f != eventFlagsEnable:
			t.Fatalf("device flags %d, want ENABLE", f)
		}
		q.DisableKicks()
		d.add(0, desc{addr: d.alloc(4, 0), len: 4})
		if !q.EnableKicks() {
			t.Fatalf("event idx %v: EnableKicks missed a chain made available while kicks were off", eventIdx)
		}
	}
}

func TestPackedRingAsksForTheNextKickAsItTakesChainsWithKicksOn(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(true, false)
	c := q.NewChain()
	q.EnableKicks()
	d.add(0, desc{addr: d.alloc(4, 0), len: 4}, desc{addr: d.alloc(4, 0), len: 4})
	mustNext(t, q, c)
	if ow, f := d.deviceEvent(); f != eventFlagsDesc || ow != wrapBit|2 {
		t.Fatalf("device area %#x/%d, want DESC at %#x", ow, f, wrapBit|2)
	}
}

func TestPackedRingLastAvailCarriesTheWrapCounter(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(false, false)
	c := q.NewChain()
	if q.LastAvail() != wrapBit || q.UsedIdx() != wrapBit {
		t.Fatalf("fresh ring at %#x/%#x, want index 0 with wrap counter 1", q.LastAvail(), q.UsedIdx())
	}
	for id := range uint16(5) { // one lap and one more
		d.add(id%4, desc{addr: d.alloc(4, 0), len: 4})
		mustNext(t, q, c)
		q.Push(c.Head, 0)
		q.Publish()
		d.popUsed()
	}
	if q.LastAvail() != 1 || q.UsedIdx() != 1 {
		t.Fatalf("after 5 of 4: %#x/%#x, want index 1 with wrap counter 0", q.LastAvail(), q.UsedIdx())
	}
	// A new device instance resumes where this one stopped.
	q2 := d.queue(false, false)
	q2.SetUsedIdx(q.UsedIdx())
	q2.SetLastAvail(q.LastAvail())
	d.add(1, desc{addr: d.alloc(4, 0), len: 4})
	mustNext(t, q2, c)
	q2.Push(c.Head, 0)
	q2.Publish()
	if id, _, _, ok := d.popUsed(); !ok || id != 1 {
		t.Fatalf("resumed ring: used id %d ok %v", id, ok)
	}
}

func TestPackedRingRefusesABasePastTheRing(t *testing.T) {
	for _, set := range []func(q *Queue){
		func(q *Queue) { q.SetLastAvail(wrapBit | 4) },
		func(q *Queue) { q.SetUsedIdx(0x7fff) },
	} {
		d := newPackedDriver(t, 4)
		q := d.queue(false, false)
		set(q)
		if ok, err := q.Next(q.NewChain()); ok || !errors.Is(err, ErrBroken) {
			t.Fatalf("Next after a base past the ring: ok=%v err=%v", ok, err)
		}
	}
}

func TestPackedRingResubmitsARecordedChain(t *testing.T) {
	d := newPackedDriver(t, 8)
	q := d.queue(false, false)
	c := q.NewChain()
	// A predecessor took a 3-descriptor chain with id 4 at 0..2 and died.
	descs := d.request(32)
	d.add(4, descs...)
	mustNext(t, q, c)
	rec := append([]Desc(nil), q.Taken()...)
	if len(rec) != 3 || rec[2].ID != 4 || rec[1].Len != 32 || rec[0].Flags&descFNext == 0 {
		t.Fatalf("taken %+v", rec)
	}
	// The used descriptor of another chain has since overwritten 0.
	d.writeRaw(0, 0, 0, 7, descFAvail|descFUsed)

	q2 := d.queue(false, false)
	id, err := q2.AddInflight(rec)
	if err != nil || id != 4 {
		t.Fatalf("AddInflight: id %d err %v", id, err)
	}
	q2.SetLastAvail(wrapBit | 3)
	if err := q2.ChainAt(4, c); err != nil || c.Head != 4 || len(c.Segments) != 3 || len(c.Segments[1].Buf) != 32 {
		t.Fatalf("ChainAt: %v, head %d segments %d", err, c.Head, len(c.Segments))
	}
	q2.Push(4, 33)
	q2.Publish()
	if id, n, _, ok := d.popUsed(); !ok || id != 4 || n != 33 {
		t.Fatalf("used id %d len %d ok %v", id, n, ok)
	}
	if q2.UsedIdx() != wrapBit|3 {
		t.Fatalf("used at %#x, want the recorded chain's 3 descriptors skipped", q2.UsedIdx())
	}
}

func TestPackedRingRefusesHostileInflightRecords(t *testing.T) {
	d := newPackedDriver(t, 4)
	one := func(id uint16) []Desc { return []Desc{{Addr: bufBase, Len: 4, ID: id}} }
	tests := []struct {
		name  string
		descs [][]Desc
	}{
		{"empty chain", [][]Desc{{}}},
		{"chain longer than the ring", [][]Desc{make([]Desc, 5)}},
		{"id past the ring", [][]Desc{one(4)}},
		{"id twice", [][]Desc{one(1), one(1)}},
		{"more descriptors than the ring", [][]Desc{make([]Desc, 3), one(2), one(3)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := d.queue(false, false)
			var err error
			for _, ds := range tt.descs {
				if _, err = q.AddInflight(ds); err != nil {
					break
				}
			}
			if !errors.Is(err, ErrBroken) {
				t.Fatalf("AddInflight: %v, want ErrBroken", err)
			}
		})
	}
	split := newDriver(t, 4).queue(false, false)
	if _, err := split.AddInflight(one(0)); !errors.Is(err, ErrConfig) {
		t.Fatalf("AddInflight on a split ring: %v", err)
	}
}

func TestPackedRingChainAtOfAnUnrecordedIDIsABadChain(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(false, false)
	if err := q.ChainAt(2, q.NewChain()); !errors.Is(err, ErrBadChain) {
		t.Fatalf("ChainAt: %v", err)
	}
}

func TestPackedRingDescAvailableTellsAPublishedSlot(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(false, false)
	c := q.NewChain()
	d.add(0, desc{addr: d.alloc(4, 0), len: 4})
	if !q.DescAvailable(wrapBit | 0) {
		t.Fatal("available descriptor not reported available")
	}
	mustNext(t, q, c)
	q.Push(0, 0)
	q.Publish()
	if q.DescAvailable(wrapBit|0) || q.DescAvailable(wrapBit|4) || q.DescAvailable(wrapBit|1) {
		t.Fatal("used, past-the-ring or never-written descriptor reported available")
	}
}

func TestPackedRingValidatesItsConfig(t *testing.T) {
	ok := Config{Size: 8, DescAddr: descGPA, AvailAddr: driverAreaGPA, UsedAddr: deviceAreaGPA, Packed: true}
	tests := []struct {
		name string
		cfg  func(Config) Config
		ok   bool
	}{
		{"valid", func(c Config) Config { return c }, true},
		{"size not a power of 2", func(c Config) Config { c.Size = 12; return c }, true},
		{"size filling a region", func(c Config) Config { c.Size = bufLen / descSize; c.DescAddr = bufBase; return c }, true},
		{"size 0", func(c Config) Config { c.Size = 0; return c }, false},
		{"size above max", func(c Config) Config { c.Size = MaxSize + 1; return c }, false},
		{"desc not 16-aligned", func(c Config) Config { c.DescAddr += 8; return c }, false},
		{"driver area only 2-aligned", func(c Config) Config { c.AvailAddr += 2; return c }, false},
		{"device area only 2-aligned", func(c Config) Config { c.UsedAddr += 2; return c }, false},
		{"desc unmapped", func(c Config) Config { c.DescAddr = 0; return c }, false},
		{"driver area unmapped", func(c Config) Config { c.AvailAddr = bufBase + bufLen; return c }, false},
		{"device area unmapped", func(c Config) Config { c.UsedAddr = bufBase + bufLen; return c }, false},
		{"device area at a region's last 4 bytes", func(c Config) Config { c.UsedAddr = edgeBase + edgeLen - 4; return c }, true},
		{"desc ring crosses into an adjacent region", func(c Config) Config { c.DescAddr = adjBase + adjLen - 64; return c }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(newGuestMem(), tt.cfg(ok))
			if tt.ok && err != nil {
				t.Fatalf("New: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrConfig) {
				t.Fatalf("New: got %v, want ErrConfig", err)
			}
		})
	}
}
