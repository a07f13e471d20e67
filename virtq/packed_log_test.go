package virtq

import (
	"sync/atomic"
	"testing"
)

// packedLogRecorder records each logged range and whether the bytes the
// device writes there already hold the new value: a store is logged after
// it is made.
type packedLogRecorder struct {
	d      *packedDriver
	writes []packedLoggedWrite
}

type packedLoggedWrite struct {
	gpa, n uint64
	stored bool // a used descriptor's flags (or the device area) were already stored
}

func (r *packedLogRecorder) LogWrite(gpa, n uint64) {
	w := packedLoggedWrite{gpa: gpa, n: n}
	switch {
	case gpa >= descGPA+packedDescOffLen && gpa < descGPA+descSize*uint64(r.d.size):
		slot := uint16((gpa - descGPA) / descSize)
		w.stored = getHalf(atomic.LoadUint32(r.d.word(slot)), 2)&descFUsed != 0
	case gpa == logAddr:
		_, f := r.d.deviceEvent()
		w.stored = f == eventFlagsDisable
	}
	r.writes = append(r.writes, w)
}

func TestPackedRingLogsEveryDescriptorRingByteItWritesAfterWritingIt(t *testing.T) {
	d := newPackedDriver(t, 4)
	rec := &packedLogRecorder{d: d}
	cfg := d.config(false, false)
	cfg.UsedLog, cfg.UsedLogAddr = rec, logAddr
	q, err := New(d.mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := q.NewChain()
	q.DisableKicks()
	d.add(0, desc{addr: d.alloc(4, 0), len: 4}, desc{addr: d.alloc(4, 0), len: 4}) // 0..1
	d.add(1, desc{addr: d.alloc(4, 0), len: 4})                                    // 2
	mustNext(t, q, c)
	mustNext(t, q, c)
	q.Push(1, 0) // slot 0, held for Publish
	q.Push(0, 4) // slot 1
	q.Publish()
	want := []packedLoggedWrite{
		{logAddr, eventSize, true},                       // the device area: DISABLE
		{descGPA + descSize + packedDescOffLen, 8, true}, // slot 1: len, id, flags
		{descGPA + packedDescOffLen, 8, true},            // slot 0, at Publish
	}
	if len(rec.writes) != len(want) {
		t.Fatalf("logged %+v, want %+v", rec.writes, want)
	}
	for i, w := range want {
		if rec.writes[i] != w {
			t.Fatalf("write %d logged as %+v, want %+v", i, rec.writes[i], w)
		}
	}
}

func TestPackedRingWithoutALogLogsNothing(t *testing.T) {
	d := newPackedDriver(t, 4)
	q := d.queue(true, false)
	c := q.NewChain()
	q.EnableKicks()
	d.add(0, desc{addr: d.alloc(4, 0), len: 4})
	mustNext(t, q, c)
	q.Push(0, 0)
	q.Publish() // no panic on the nil log
}
