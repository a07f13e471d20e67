package virtq

import (
	"errors"
	"testing"
)

// A chain taken by an earlier device instance is walked again from its
// head alone: same segments, and the avail ring is left where it was.
func TestChainAtRewalksATakenChainWithoutTouchingTheAvailRing(t *testing.T) {
	d := newDriver(t, 8)
	q := d.queue(false, true)
	hdr, data, st := d.alloc(16, 1), d.alloc(512, 2), d.alloc(1, 3)
	head := d.chain(5, desc{addr: hdr, len: 16}, desc{addr: data, len: 512, flags: descFWrite}, desc{addr: st, len: 1, flags: descFWrite})
	d.avail(head)
	taken := q.NewChain()
	if ok, err := q.Next(taken); !ok || err != nil {
		t.Fatalf("Next: ok=%v err=%v", ok, err)
	}

	again := q.NewChain()
	if err := q.ChainAt(head, again); err != nil {
		t.Fatalf("ChainAt: %v", err)
	}
	if again.Head != head || len(again.Segments) != len(taken.Segments) {
		t.Fatalf("head %d with %d segments, want %d with %d", again.Head, len(again.Segments), head, len(taken.Segments))
	}
	for i := range again.Segments {
		if &again.Segments[i].Buf[0] != &taken.Segments[i].Buf[0] || again.Segments[i].Writable != taken.Segments[i].Writable {
			t.Fatalf("segment %d differs from the one Next found", i)
		}
	}
	if q.LastAvail() != 1 {
		t.Fatalf("LastAvail %d after ChainAt, want 1", q.LastAvail())
	}
	if ok, err := q.Next(again); ok || err != nil {
		t.Fatalf("ring should be empty: ok=%v err=%v", ok, err)
	}

	if err := q.ChainAt(8, again); !errors.Is(err, ErrBadChain) || again.Head != 8 {
		t.Fatalf("head outside the table: head %d, err %v; want ErrBadChain", again.Head, err)
	}
}
