package virtq

import (
	"sync"
	"sync/atomic"
	"testing"
)

// availEventPad is the guest-physical address of the two guest bytes that
// share avail_event's aligned word: right after the used ring.
func availEventPad(size uint16) uint64 { return usedGPA + 6 + usedElemSize*uint64(size) }

// TestEnableKicksWhenEveryCompareAndSwapFails: a guest that rewrites the
// bytes next to avail_event between each of our load and swap used to make
// EnableKicks give up and report work that was not there, so the worker
// polled an empty ring forever at 100 % of a core. Now the kick is armed
// after a bounded number of attempts, the guest's bytes are left as it
// wrote them, and an empty ring reads as empty.
func TestEnableKicksWhenEveryCompareAndSwapFails(t *testing.T) {
	const size = 4
	d := newDriver(t, size)
	q := d.queue(true, false)
	attempts := 0
	var guest uint16
	q.casRace = func() {
		attempts++
		guest++
		d.store16(availEventPad(size), guest)
	}
	for _, last := range []uint16{7, 65535, 0} {
		attempts = 0
		q.SetLastAvail(last)
		d.setAvailIdx(last)
		if q.EnableKicks() {
			t.Fatalf("last avail %d: EnableKicks reported work on an empty ring", last)
		}
		if attempts != casAttempts {
			t.Fatalf("last avail %d: %d compare-and-swap attempts, want the bound %d", last, attempts, casAttempts)
		}
		if got := d.availEvent(); got != last {
			t.Fatalf("avail_event %d, want %d", got, last)
		}
		if got := d.load16(availEventPad(size)); got != guest {
			t.Fatalf("guest bytes after avail_event %#x, want the guest's last %#x", got, guest)
		}
	}
	// Work that arrived before the kick was armed is still found.
	q.DisableKicks()
	d.chain(0, desc{addr: d.alloc(4, 0), len: 4})
	d.avail(0)
	if !q.EnableKicks() {
		t.Fatal("EnableKicks missed work while failing its swaps")
	}
}

// TestNextArmsKickWhenEveryCompareAndSwapFails: with kicks on, each pop
// asks for a kick at the next entry, contended or not.
func TestNextArmsKickWhenEveryCompareAndSwapFails(t *testing.T) {
	const size = 4
	d := newDriver(t, size)
	q := d.queue(true, false)
	q.casRace = func() { d.store16(availEventPad(size), d.load16(availEventPad(size))+1) }
	d.chain(0, desc{addr: d.alloc(4, 0), len: 4})
	d.avail(0)
	if ok, err := q.Next(q.NewChain()); !ok || err != nil {
		t.Fatalf("Next: ok=%v err=%v", ok, err)
	}
	if got := d.availEvent(); got != 1 {
		t.Fatalf("avail_event %d after the pop, want 1", got)
	}
}

// TestEnableKicksWhileGuestRewritesNeighbourBytes is the attack as a guest
// mounts it: another goroutine rewrites the two bytes after the used ring as
// fast as it can while the device arms its kick again and again. Each
// EnableKicks returns, within the bounded attempts, with avail_event set and
// no phantom work; the guest's bytes are never clobbered (the goroutine
// checks its own value survives).
func TestEnableKicksWhileGuestRewritesNeighbourBytes(t *testing.T) {
	const size, rounds = 8, 2000
	d := newDriver(t, size)
	q := d.queue(true, false)
	pad := d.word(availEventPad(size))
	var stop atomic.Bool
	var clobbered atomic.Uint32
	var wg sync.WaitGroup
	wg.Go(func() {
		for v := uint16(1); !stop.Load(); v++ {
			for {
				old := atomic.LoadUint32(pad.w)
				if got := getHalf(old, pad.shift); got != v-1 {
					clobbered.Store(uint32(got) | 1<<16)
				}
				if atomic.CompareAndSwapUint32(pad.w, old, setHalf(old, pad.shift, v)) {
					break
				}
			}
		}
	})
	attempts, maxAttempts := 0, 0
	q.casRace = func() { attempts++ }
	for i := range uint16(rounds) {
		attempts = 0
		q.SetLastAvail(i)
		d.setAvailIdx(i)
		if q.EnableKicks() {
			t.Errorf("round %d: EnableKicks reported work on an empty ring", i)
			break
		}
		if got := d.availEvent(); got != i {
			t.Errorf("round %d: avail_event %d", i, got)
			break
		}
		maxAttempts = max(maxAttempts, attempts)
	}
	stop.Store(true)
	wg.Wait()
	if maxAttempts > casAttempts {
		t.Fatalf("%d compare-and-swap attempts in one EnableKicks, bound %d", maxAttempts, casAttempts)
	}
	if c := clobbered.Load(); c != 0 {
		t.Fatalf("the guest's bytes were overwritten (found %#x)", c&0xffff)
	}
}
