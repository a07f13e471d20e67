package virtq

import (
	"encoding/binary"
	"testing"
)

// writeRecorder is a DirtyLogger that records each range and what the
// used ring's index held when it was told: a store must be logged after
// it is made.
type writeRecorder struct {
	d      *driver
	writes []loggedWrite
}

type loggedWrite struct {
	gpa, n  uint64
	usedIdx uint16 // used.idx in guest memory at the time
}

func (r *writeRecorder) LogWrite(gpa, n uint64) {
	r.writes = append(r.writes, loggedWrite{gpa, n, r.d.usedIdx()})
}

// logAddr is where the tests' used rings are logged: not the ring's own
// guest address, as log_guest_addr need not be.
const logAddr = 0x7000_0000

func loggedQueue(t *testing.T, eventIdx bool) (*Queue, *writeRecorder, *driver) {
	t.Helper()
	d := newDriver(t, 4)
	rec := &writeRecorder{d: d}
	cfg := d.config(eventIdx, false)
	cfg.UsedLog, cfg.UsedLogAddr = rec, logAddr
	q, err := New(d.mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return q, rec, d
}

func TestPushLogsTheUsedElementAtLogAddrBeforeUsedIdx(t *testing.T) {
	q, rec, _ := loggedQueue(t, false)
	q.Push(3, 100) // slot 0
	q.Push(1, 1)   // slot 1
	want := []loggedWrite{{logAddr + 4, 8, 0}, {logAddr + 4 + 8, 8, 0}}
	if len(rec.writes) != len(want) {
		t.Fatalf("logged %+v, want %+v", rec.writes, want)
	}
	for i, w := range want {
		if rec.writes[i] != w {
			t.Fatalf("write %d logged as %+v, want %+v (used.idx still 0: before publishing)", i, rec.writes[i], w)
		}
	}
}

func TestPublishLogsUsedIdxAfterStoringIt(t *testing.T) {
	q, rec, _ := loggedQueue(t, false)
	q.Push(3, 100)
	rec.writes = nil
	q.Publish()
	if len(rec.writes) != 1 || rec.writes[0] != (loggedWrite{logAddr, 4, 1}) {
		t.Fatalf("Publish logged %+v, want used.flags|idx at %#x, 4 bytes, after idx became 1", rec.writes, logAddr)
	}
}

func TestKickSuppressionLogsUsedFlags(t *testing.T) {
	q, rec, _ := loggedQueue(t, false)
	q.DisableKicks()
	if len(rec.writes) != 1 || rec.writes[0].gpa != logAddr || rec.writes[0].n != 4 {
		t.Fatalf("DisableKicks logged %+v, want used.flags at %#x", rec.writes, logAddr)
	}
}

func TestEnableKicksLogsAvailEventWhenItStoresIt(t *testing.T) {
	q, rec, d := loggedQueue(t, true)
	q.SetLastAvail(5) // avail_event is 0: arming a kick at 5 stores it
	q.EnableKicks()
	at := uint64(logAddr + 4 + 8*uint64(d.size))
	if len(rec.writes) != 1 || rec.writes[0].gpa != at || rec.writes[0].n != 2 {
		t.Fatalf("EnableKicks logged %+v, want avail_event at %#x, 2 bytes", rec.writes, at)
	}
}

// TestQueueWithoutLoggerWritesTheSameRing: the logger only observes; the
// ring's bytes are those of a queue without one.
func TestQueueWithoutLoggerWritesTheSameRing(t *testing.T) {
	plain := newDriver(t, 4)
	q0 := plain.queue(true, false)
	q1, _, logged := loggedQueue(t, true)
	for _, q := range []*Queue{q0, q1} {
		q.DisableKicks()
		q.Push(2, 7)
		q.Publish()
		q.EnableKicks()
	}
	a := plain.mem.slice(t, usedGPA, 6+8*4+2)
	b := logged.mem.slice(t, usedGPA, 6+8*4+2)
	if string(a) != string(b) {
		t.Fatalf("used ring %x with a logger, %x without", b, a)
	}
	if binary.LittleEndian.Uint16(b[2:]) != 1 {
		t.Fatalf("used.idx %d, want 1", binary.LittleEndian.Uint16(b[2:]))
	}
}
