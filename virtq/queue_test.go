package virtq

import (
	"bytes"
	"errors"
	"testing"
)

func TestNewValidation(t *testing.T) {
	ok := Config{Size: 8, DescAddr: descGPA, AvailAddr: availGPA, UsedAddr: usedGPA}
	tests := []struct {
		name string
		cfg  func(Config) Config
		ok   bool
	}{
		{"valid", func(c Config) Config { return c }, true},
		{"valid with event idx", func(c Config) Config { c.EventIdx = true; return c }, true},
		{"avail only 2-aligned", func(c Config) Config { c.AvailAddr += 2; c.EventIdx = true; return c }, true},
		{"size 1", func(c Config) Config { c.Size = 1; return c }, true},
		{"size 1 avail only 2-aligned", func(c Config) Config { c.Size = 1; c.AvailAddr += 2; c.EventIdx = true; return c }, true},
		{"size 0", func(c Config) Config { c.Size = 0; return c }, false},
		{"size not power of 2", func(c Config) Config { c.Size = 12; return c }, false},
		{"size above max", func(c Config) Config { c.Size = 65535; return c }, false},
		{"desc not 16-aligned", func(c Config) Config { c.DescAddr += 8; return c }, false},
		{"avail not 2-aligned", func(c Config) Config { c.AvailAddr++; return c }, false},
		{"used not 4-aligned", func(c Config) Config { c.UsedAddr += 2; return c }, false},
		{"desc unmapped", func(c Config) Config { c.DescAddr = 0; return c }, false},
		{"avail unmapped", func(c Config) Config { c.AvailAddr = bufBase + bufLen; return c }, false},
		{"used unmapped", func(c Config) Config { c.UsedAddr = bufBase + bufLen; return c }, false},
		{"desc crosses region end", func(c Config) Config { c.DescAddr = edgeBase + edgeLen - 64; return c }, false},
		// 6+8*size is 2 mod 4, so the avail_event word ends on the 4-byte
		// boundary after the ring: still inside any 4-aligned region.
		{"used ends 2 bytes before region end with event idx", func(c Config) Config {
			c.UsedAddr = edgeBase + edgeLen - (6 + 8*8) - 2
			c.EventIdx = true
			return c
		}, true},
		{"used crosses region end", func(c Config) Config { c.UsedAddr = edgeBase + edgeLen - 4*8; return c }, false},
		// Rings are accessed in place: unlike buffers, they may not run
		// on into an adjacent region.
		{"desc crosses into an adjacent region", func(c Config) Config { c.DescAddr = adjBase + adjLen - 64; return c }, false},
		{"avail crosses into an adjacent region", func(c Config) Config { c.AvailAddr = adjBase + adjLen - 8; return c }, false},
		{"used crosses into an adjacent region", func(c Config) Config { c.UsedAddr = adjBase + adjLen - 16; return c }, false},
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

func TestNextDirectChain(t *testing.T) {
	d := newDriver(t, 8)
	q := d.queue(false, false)
	c := q.NewChain()
	if ok, err := q.Next(c); ok || err != nil {
		t.Fatalf("empty ring: ok=%v err=%v", ok, err)
	}
	hdr, data, st := d.alloc(16, 1), d.alloc(512, 2), d.alloc(1, 3)
	head := d.chain(3, desc{addr: hdr, len: 16}, desc{addr: data, len: 512, flags: descFWrite}, desc{addr: st, len: 1, flags: descFWrite})
	d.avail(head)
	ok, err := q.Next(c)
	if !ok || err != nil {
		t.Fatalf("Next: ok=%v err=%v", ok, err)
	}
	if c.Head != head || len(c.Segments) != 3 {
		t.Fatalf("head %d segments %d, want %d and 3", c.Head, len(c.Segments), head)
	}
	want := []struct {
		n    int
		fill byte
		w    bool
	}{{16, 1, false}, {512, 2, true}, {1, 3, true}}
	for i, w := range want {
		s := c.Segments[i]
		if len(s.Buf) != w.n || s.Writable != w.w || !bytes.Equal(s.Buf, bytes.Repeat([]byte{w.fill}, w.n)) {
			t.Errorf("segment %d: len %d writable %v, want %d %v", i, len(s.Buf), s.Writable, w.n, w.w)
		}
	}
	// The segments alias guest memory: zero copy.
	c.Segments[2].Buf[0] = 0x5a
	if got := d.mem.slice(t, st, 1)[0]; got != 0x5a {
		t.Fatalf("segment is not a window on guest memory")
	}
	if b, ok := c.Status(); !ok || &b[0] != &c.Segments[2].Buf[0] {
		t.Fatalf("Status did not return the last writable byte")
	}
	if ok, err := q.Next(c); ok || err != nil {
		t.Fatalf("drained ring: ok=%v err=%v", ok, err)
	}
	if q.LastAvail() != 1 {
		t.Fatalf("LastAvail %d, want 1", q.LastAvail())
	}
}

func TestNextIndirectChain(t *testing.T) {
	d := newDriver(t, 4)
	q := d.queue(false, true)
	a, b := d.alloc(528, 7), d.alloc(1, 8)
	table := d.alloc(2*descSize, 0)
	d.writeDescs(table, 0, desc{addr: a, len: 528, flags: descFNext, next: 1}, desc{addr: b, len: 1, flags: descFWrite})
	// The WRITE flag on the pointing descriptor must be ignored.
	d.chain(0, desc{addr: table, len: 2 * descSize, flags: descFIndirect | descFWrite})
	d.avail(0)
	c := q.NewChain()
	ok, err := q.Next(c)
	if !ok || err != nil {
		t.Fatalf("Next: ok=%v err=%v", ok, err)
	}
	if len(c.Segments) != 2 || len(c.Segments[0].Buf) != 528 || c.Segments[0].Writable || !c.Segments[1].Writable {
		t.Fatalf("unexpected segments %+v", c.Segments)
	}
}

func TestZeroLengthDescriptor(t *testing.T) {
	d := newDriver(t, 4)
	q := d.queue(false, false)
	d.chain(0, desc{addr: 0xdead0000, len: 0}, desc{addr: d.alloc(4, 1), len: 4, flags: descFWrite}, desc{len: 0, flags: descFWrite})
	d.avail(0)
	c := q.NewChain()
	if ok, err := q.Next(c); !ok || err != nil {
		t.Fatalf("Next: ok=%v err=%v", ok, err)
	}
	if len(c.Segments) != 3 || len(c.Segments[0].Buf) != 0 {
		t.Fatalf("segments %+v", c.Segments)
	}
	if _, ok := c.Status(); ok {
		t.Fatal("Status found a byte in an empty last writable segment")
	}
}

func TestStatusNoWritable(t *testing.T) {
	c := Chain{Segments: []Segment{{Buf: []byte{1, 2}}}}
	if _, ok := c.Status(); ok {
		t.Fatal("Status found a byte in a chain without writable segments")
	}
}

// TestHostileChains: each malformed chain is reported with ErrBadChain, its
// head is usable for Push, and the queue keeps serving the next chain.
func TestHostileChains(t *testing.T) {
	const size = 8
	tests := []struct {
		name     string
		indirect bool // negotiate INDIRECT_DESC
		build    func(d *driver) uint16
	}{
		{"self loop", false, func(d *driver) uint16 {
			d.writeDescs(descGPA, 2, desc{addr: d.alloc(8, 0), len: 8, flags: descFNext, next: 2})
			return 2
		}},
		{"two descriptor loop", false, func(d *driver) uint16 {
			b := d.alloc(8, 0)
			d.writeDescs(descGPA, 1, desc{addr: b, len: 8, flags: descFNext, next: 2}, desc{addr: b, len: 8, flags: descFNext, next: 1})
			return 1
		}},
		{"next out of range", false, func(d *driver) uint16 {
			d.writeDescs(descGPA, 0, desc{addr: d.alloc(8, 0), len: 8, flags: descFNext, next: size})
			return 0
		}},
		{"buffer unmapped", false, func(d *driver) uint16 {
			return d.chain(0, desc{addr: bufBase + bufLen + 0x100, len: 8})
		}},
		{"buffer crosses region end", false, func(d *driver) uint16 {
			return d.chain(0, desc{addr: edgeBase + edgeLen - 4, len: 8})
		}},
		{"buffer address wraps", false, func(d *driver) uint16 {
			return d.chain(0, desc{addr: ^uint64(0) - 2, len: 8})
		}},
		{"readable after writable", false, func(d *driver) uint16 {
			b := d.alloc(16, 0)
			return d.chain(0, desc{addr: b, len: 8, flags: descFWrite}, desc{addr: b + 8, len: 8})
		}},
		{"indirect not negotiated", false, func(d *driver) uint16 {
			t := d.alloc(descSize, 0)
			d.writeDescs(t, 0, desc{addr: d.alloc(8, 0), len: 8})
			return d.chain(0, desc{addr: t, len: descSize, flags: descFIndirect})
		}},
		{"nested indirect", true, func(d *driver) uint16 {
			inner := d.alloc(descSize, 0)
			d.writeDescs(inner, 0, desc{addr: d.alloc(8, 0), len: 8})
			outer := d.alloc(descSize, 0)
			d.writeDescs(outer, 0, desc{addr: inner, len: descSize, flags: descFIndirect})
			return d.chain(0, desc{addr: outer, len: descSize, flags: descFIndirect})
		}},
		{"indirect with next", true, func(d *driver) uint16 {
			t := d.alloc(descSize, 0)
			d.writeDescs(t, 0, desc{addr: d.alloc(8, 0), len: 8})
			return d.chain(0, desc{addr: t, len: descSize, flags: descFIndirect}, desc{addr: d.alloc(8, 0), len: 8})
		}},
		{"indirect not at head", true, func(d *driver) uint16 {
			t := d.alloc(descSize, 0)
			d.writeDescs(t, 0, desc{addr: d.alloc(8, 0), len: 8})
			d.writeDescs(descGPA, 0, desc{addr: d.alloc(8, 0), len: 8, flags: descFNext, next: 1}, desc{addr: t, len: descSize, flags: descFIndirect})
			return 0
		}},
		{"indirect zero length", true, func(d *driver) uint16 {
			return d.chain(0, desc{addr: d.alloc(descSize, 0), len: 0, flags: descFIndirect})
		}},
		{"indirect length not multiple of 16", true, func(d *driver) uint16 {
			return d.chain(0, desc{addr: d.alloc(2*descSize, 0), len: descSize + 8, flags: descFIndirect})
		}},
		{"indirect table too large", true, func(d *driver) uint16 {
			return d.chain(0, desc{addr: bufBase, len: (MaxSize + 1) * descSize, flags: descFIndirect})
		}},
		{"indirect table unmapped", true, func(d *driver) uint16 {
			return d.chain(0, desc{addr: bufBase + bufLen, len: descSize, flags: descFIndirect})
		}},
		{"indirect loop", true, func(d *driver) uint16 {
			t := d.alloc(2*descSize, 0)
			b := d.alloc(8, 0)
			d.writeDescs(t, 0, desc{addr: b, len: 8, flags: descFNext, next: 1}, desc{addr: b, len: 8, flags: descFNext, next: 0})
			return d.chain(0, desc{addr: t, len: 2 * descSize, flags: descFIndirect})
		}},
		{"indirect next out of range", true, func(d *driver) uint16 {
			t := d.alloc(2*descSize, 0)
			b := d.alloc(8, 0)
			d.writeDescs(t, 0, desc{addr: b, len: 8, flags: descFNext, next: 1}, desc{addr: b, len: 8, flags: descFNext, next: 2})
			return d.chain(0, desc{addr: t, len: 2 * descSize, flags: descFIndirect})
		}},
		{"indirect buffer unmapped", true, func(d *driver) uint16 {
			t := d.alloc(descSize, 0)
			d.writeDescs(t, 0, desc{addr: 8, len: 8})
			return d.chain(0, desc{addr: t, len: descSize, flags: descFIndirect})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t, size)
			q := d.queue(false, tt.indirect)
			head := tt.build(d)
			good := d.chain(size-1, desc{addr: d.alloc(4, 9), len: 4, flags: descFWrite})
			d.avail(head, good)
			c := q.NewChain()
			ok, err := q.Next(c)
			if !ok || !errors.Is(err, ErrBadChain) {
				t.Fatalf("Next: ok=%v err=%v, want ok and ErrBadChain", ok, err)
			}
			if c.Head != head {
				t.Fatalf("Head %d, want %d", c.Head, head)
			}
			q.Push(c.Head, 0)
			q.Publish()
			if id, n := d.usedElem(0); id != uint32(head) || n != 0 || d.usedIdx() != 1 {
				t.Fatalf("used elem (%d,%d) idx %d", id, n, d.usedIdx())
			}
			if ok, err := q.Next(c); !ok || err != nil || c.Head != good {
				t.Fatalf("next good chain: ok=%v err=%v head=%d", ok, err, c.Head)
			}
		})
	}
}

// TestBrokenRing: a corrupt ring stops the queue for good.
func TestBrokenRing(t *testing.T) {
	const size = 8
	tests := []struct {
		name  string
		build func(d *driver)
	}{
		{"avail idx moved by more than size", func(d *driver) { d.setAvailIdx(size + 1) }},
		{"avail idx moved backwards", func(d *driver) { d.setAvailIdx(0xffff) }},
		{"head out of range", func(d *driver) { d.avail(size) }},
		{"head far out of range", func(d *driver) { d.avail(0xffff) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t, size)
			q := d.queue(false, false)
			tt.build(d)
			c := q.NewChain()
			ok, err := q.Next(c)
			if ok || !errors.Is(err, ErrBroken) {
				t.Fatalf("Next: ok=%v err=%v, want ErrBroken", ok, err)
			}
			if q.Err() == nil {
				t.Fatal("Err() is nil after ErrBroken")
			}
			if ok, err2 := q.Next(c); ok || !errors.Is(err2, ErrBroken) {
				t.Fatalf("second Next: ok=%v err=%v", ok, err2)
			}
			if q.EnableKicks() {
				t.Fatal("EnableKicks on a broken queue asks for more polling")
			}
		})
	}
}

func TestPushPublish(t *testing.T) {
	d := newDriver(t, 4)
	q := d.queue(false, false)
	q.Push(2, 513)
	q.Push(1, 1)
	if d.usedIdx() != 0 {
		t.Fatal("pushed elements visible before Publish")
	}
	if !q.Publish() {
		t.Fatal("Publish without NO_INTERRUPT did not ask to notify")
	}
	if d.usedIdx() != 2 {
		t.Fatalf("used idx %d, want 2", d.usedIdx())
	}
	if id, n := d.usedElem(0); id != 2 || n != 513 {
		t.Fatalf("elem 0 = (%d,%d)", id, n)
	}
	if id, n := d.usedElem(1); id != 1 || n != 1 {
		t.Fatalf("elem 1 = (%d,%d)", id, n)
	}
	if q.Publish() {
		t.Fatal("Publish with nothing pushed asked to notify")
	}
	d.setAvailFlags(availFNoInterrupt)
	q.Push(0, 0)
	if q.Publish() {
		t.Fatal("Publish ignored NO_INTERRUPT")
	}
	if d.usedIdx() != 3 {
		t.Fatalf("used idx %d, want 3", d.usedIdx())
	}
}

// TestEventIdxNotify checks used_event handling, including wraparound.
func TestEventIdxNotify(t *testing.T) {
	tests := []struct {
		name      string
		used      uint16 // used idx before the pushes
		pushes    int
		usedEvent uint16
		notify    bool
	}{
		{"event just crossed", 0, 1, 0, true},
		{"event crossed mid batch", 10, 4, 12, true},
		{"event at last pushed", 10, 4, 13, true},
		{"event not yet reached", 10, 4, 14, false},
		{"event behind old", 10, 4, 9, false},
		{"wrap crossing 65535", 65534, 3, 65535, true},
		{"wrap crossing 0", 65534, 3, 0, true},
		{"wrap event after new", 65534, 3, 1, false},
		{"wrap event before old", 65534, 3, 65533, false},
		{"old at 65535 event 65535", 65535, 1, 65535, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t, 8)
			q := d.queue(true, false)
			q.SetUsedIdx(tt.used)
			// The first Publish after a base change always notifies
			// (nothing is known about what the driver saw).
			q.Push(0, 0)
			if !q.Publish() {
				t.Fatal("first Publish did not notify")
			}
			q.SetUsedIdx(tt.used)
			q.signalledValid = true
			d.setUsedEvent(tt.usedEvent)
			for range tt.pushes {
				q.Push(0, 0)
			}
			if got := q.Publish(); got != tt.notify {
				t.Fatalf("Publish = %v, want %v", got, tt.notify)
			}
			if want := tt.used + uint16(tt.pushes); d.usedIdx() != want {
				t.Fatalf("used idx %d, want %d", d.usedIdx(), want)
			}
		})
	}
}

func TestKickSuppressionFlags(t *testing.T) {
	d := newDriver(t, 4)
	q := d.queue(false, false)
	q.DisableKicks()
	if d.usedFlags()&usedFNoNotify == 0 {
		t.Fatal("DisableKicks did not set NO_NOTIFY")
	}
	q.Push(1, 1) // pushes stay invisible through flag updates
	q.DisableKicks()
	if d.usedIdx() != 0 {
		t.Fatal("flag update published pushed elements")
	}
	if q.EnableKicks() {
		t.Fatal("EnableKicks reported work on an empty ring")
	}
	if d.usedFlags()&usedFNoNotify != 0 {
		t.Fatal("EnableKicks did not clear NO_NOTIFY")
	}
	if d.usedIdx() != 0 {
		t.Fatal("flag update published pushed elements")
	}
	d.chain(0, desc{addr: d.alloc(4, 0), len: 4})
	d.avail(0)
	q.DisableKicks()
	if !q.EnableKicks() {
		t.Fatal("EnableKicks missed work that arrived while kicks were off")
	}
}

func TestKickSuppressionEventIdx(t *testing.T) {
	d := newDriver(t, 4)
	q := d.queue(true, false)
	// Guest bytes after the used ring must survive avail_event updates.
	pad := d.mem.slice(t, usedGPA+6+usedElemSize*4, 2)
	pad[0], pad[1] = 0xab, 0xcd

	q.SetLastAvail(65535)
	d.setAvailIdx(65535)
	if q.EnableKicks() {
		t.Fatal("EnableKicks reported work on an empty ring")
	}
	if got := d.availEvent(); got != 65535 {
		t.Fatalf("avail_event %d, want 65535", got)
	}
	// Work arriving with kicks off is found by the re-check in EnableKicks,
	// across the 65535 -> 0 wrap.
	q.DisableKicks()
	d.chain(0, desc{addr: d.alloc(4, 0), len: 4})
	d.avail(0)
	if d.availIdx != 0 {
		t.Fatalf("driver avail idx %d, want wrapped 0", d.availIdx)
	}
	if got := d.availEvent(); got != 65535 {
		t.Fatalf("DisableKicks moved avail_event to %d", got)
	}
	if !q.EnableKicks() {
		t.Fatal("EnableKicks missed work across the wrap")
	}
	// With kicks on, each pop asks for a kick at the next entry.
	c := q.NewChain()
	if ok, err := q.Next(c); !ok || err != nil {
		t.Fatalf("Next: %v %v", ok, err)
	}
	if got := d.availEvent(); got != 0 {
		t.Fatalf("avail_event after pop %d, want 0", got)
	}
	// With kicks off, pops leave avail_event alone.
	q.DisableKicks()
	d.avail(0)
	if ok, err := q.Next(c); !ok || err != nil {
		t.Fatalf("Next: %v %v", ok, err)
	}
	if got := d.availEvent(); got != 0 {
		t.Fatalf("avail_event moved to %d with kicks off", got)
	}
	if q.EnableKicks() || d.availEvent() != 1 {
		t.Fatalf("EnableKicks: avail_event %d, want 1", d.availEvent())
	}
	if pad[0] != 0xab || pad[1] != 0xcd {
		t.Fatalf("bytes after the used ring clobbered: %x", pad)
	}
	if d.usedFlags() != 0 {
		t.Fatal("EVENT_IDX queue wrote NO_NOTIFY")
	}
}

func TestRestoreIndices(t *testing.T) {
	d := newDriver(t, 8)
	q := d.queue(false, false)
	q.Push(0, 0)
	q.Push(0, 0)
	q.Publish()
	// A reconnecting backend finds the used index in the ring.
	q2 := d.queue(false, false)
	if q2.UsedIdx() != 2 {
		t.Fatalf("UsedIdx %d, want 2 from ring", q2.UsedIdx())
	}
	q2.SetLastAvail(2)
	d.setAvailIdx(2)
	d.chain(4, desc{addr: d.alloc(4, 0), len: 4})
	d.avail(4)
	c := q2.NewChain()
	if ok, err := q2.Next(c); !ok || err != nil || c.Head != 4 {
		t.Fatalf("Next after restore: %v %v head %d", ok, err, c.Head)
	}
	if q2.LastAvail() != 3 {
		t.Fatalf("LastAvail %d", q2.LastAvail())
	}
	q2.SetUsedIdx(100)
	if d.usedIdx() != 100 {
		t.Fatalf("SetUsedIdx not stored: %d", d.usedIdx())
	}
}

// TestConcurrentDriver runs the driver and the device in two goroutines so
// the race detector checks the ordering of ring accesses.
func TestConcurrentDriver(t *testing.T) {
	const size, total = 16, 5000
	d := newDriver(t, size)
	q := d.queue(true, true)
	bufs := make([]uint64, size)
	for i := range bufs {
		bufs[i] = d.alloc(8, 0)
	}
	done := make(chan error, 1)
	go func() {
		c := q.NewChain()
		for served := 0; served < total; {
			ok, err := q.Next(c)
			if err != nil {
				done <- err
				return
			}
			if !ok {
				continue
			}
			c.Segments[0].Buf[0]++ // device writes the buffer
			q.Push(c.Head, 1)
			q.Publish()
			served++
		}
		done <- nil
	}()
	var seenUsed uint16
	inflight := 0
	free := make([]uint16, 0, size)
	for i := range uint16(size) {
		free = append(free, i)
	}
	for submitted := 0; submitted < total || inflight > 0; {
		if submitted < total && len(free) > 0 {
			h := free[len(free)-1]
			free = free[:len(free)-1]
			d.writeDescs(descGPA, int(h), desc{addr: bufs[h], len: 8, flags: descFWrite})
			d.avail(h)
			submitted++
			inflight++
			continue
		}
		for u := d.usedIdx(); seenUsed != u; seenUsed++ {
			id, _ := d.usedElem(seenUsed)
			free = append(free, uint16(id))
			inflight--
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
