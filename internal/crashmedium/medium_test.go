package crashmedium

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func newMedium(t *testing.T) *Medium {
	t.Helper()
	m, err := New(64 << 10)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func store(t *testing.T, m *Medium, off int64, v uint64) {
	t.Helper()
	b, err := m.Slice(off, 8)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(b, v)
}

func word(b []byte, off int64) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

func TestEveryPersistAndFlushIsOneBarrier(t *testing.T) {
	m := newMedium(t)
	if m.Barriers() != 0 {
		t.Fatalf("fresh medium has %d barriers", m.Barriers())
	}
	store(t, m, 0, 1)
	if err := m.Persist(0, 8); err != nil {
		t.Fatal(err)
	}
	if err := m.Persist(4096, 512); err != nil { // nothing stored there: still a barrier
		t.Fatal(err)
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	if m.Barriers() != 3 {
		t.Fatalf("%d barriers, want 3", m.Barriers())
	}
	if !m.Barrier(2).Flush || m.Barrier(0).Flush {
		t.Fatal("barrier kinds recorded wrongly")
	}
}

func TestPendingWordsAreTheStoresNoBarrierCoveredYet(t *testing.T) {
	m := newMedium(t)
	store(t, m, 16, 0xaa)
	store(t, m, 8192, 0xbb)
	if err := m.Persist(16, 8); err != nil {
		t.Fatal(err)
	}
	// At barrier 0 both stores were pending; the barrier made only the
	// first durable, so the second is still pending now.
	got := m.Pending(0)
	want := []Word{{Off: 16, Old: 0, New: 0xaa}, {Off: 8192, Old: 0, New: 0xbb}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("pending at barrier 0: %+v, want %+v", got, want)
	}
	if now := m.Pending(1); len(now) != 1 || now[0] != want[1] {
		t.Fatalf("pending now: %+v, want only the unpersisted store", now)
	}
}

func TestAStoreOfTheDurableValueIsNotPending(t *testing.T) {
	m := newMedium(t)
	store(t, m, 24, 7)
	store(t, m, 24, 0)
	if p := m.Pending(0); len(p) != 0 {
		t.Fatalf("pending %+v after restoring the durable value", p)
	}
}

func TestZeroedRangeIsPendingUntilPersisted(t *testing.T) {
	m := newMedium(t)
	store(t, m, 0, 5)
	store(t, m, 8, 6)
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := m.Zero(0, 16); err != nil {
		t.Fatal(err)
	}
	if p := m.Pending(1); len(p) != 2 || p[0].New != 0 || p[0].Old != 5 {
		t.Fatalf("pending after Zero: %+v", p)
	}
	img, err := m.CrashImage(1, None)
	if err != nil {
		t.Fatal(err)
	}
	if word(img, 0) != 5 || word(img, 8) != 6 {
		t.Fatal("a power loss before the zeroes were persisted must keep the old words")
	}
}

func TestPersistOfAPartialWordMakesTheWholeWordDurable(t *testing.T) {
	m := newMedium(t)
	store(t, m, 32, 0x1122334455667788)
	if err := m.Persist(36, 2); err != nil {
		t.Fatal(err)
	}
	img, err := m.CrashImage(1, None)
	if err != nil {
		t.Fatal(err)
	}
	if word(img, 32) != 0x1122334455667788 {
		t.Fatalf("word %#x", word(img, 32))
	}
}

// A four-store run, one barrier after each of the first three stores:
//
//	store A; persist A; store B; store C; persist B; persist C; store D
func recordedRun(t *testing.T) *Medium {
	m := newMedium(t)
	store(t, m, 0, 0xa)
	if err := m.Persist(0, 8); err != nil {
		t.Fatal(err)
	}
	store(t, m, 8, 0xb)
	store(t, m, 4096, 0xc)
	if err := m.Persist(8, 8); err != nil {
		t.Fatal(err)
	}
	if err := m.Persist(4096, 8); err != nil {
		t.Fatal(err)
	}
	store(t, m, 16, 0xd)
	return m
}

func TestCrashImageKeepsTheChosenSubsetOfPendingWords(t *testing.T) {
	m := recordedRun(t)
	// Point 1: A durable; B and C pending.
	for bits := uint64(0); bits < 4; bits++ {
		img, err := m.CrashImage(1, Mask(bits))
		if err != nil {
			t.Fatal(err)
		}
		wantB, wantC := uint64(0), uint64(0)
		if bits&1 != 0 {
			wantB = 0xb
		}
		if bits&2 != 0 {
			wantC = 0xc
		}
		if word(img, 0) != 0xa || word(img, 8) != wantB || word(img, 4096) != wantC {
			t.Errorf("mask %b: A=%#x B=%#x C=%#x", bits, word(img, 0), word(img, 8), word(img, 4096))
		}
	}
	// Point 3 (now): A, B, C durable, D pending.
	img, err := m.CrashImage(3, None)
	if err != nil {
		t.Fatal(err)
	}
	if word(img, 8) != 0xb || word(img, 4096) != 0xc || word(img, 16) != 0 {
		t.Fatal("point 3 without pending words lost a persisted store or kept D")
	}
	if !bytes.Equal(m.ProcessCrash(), mustImage(t, m, 3, All)) {
		t.Fatal("a process crash now must equal the last point with every pending word kept")
	}
}

func mustImage(t *testing.T, m *Medium, k int, keep Subset) []byte {
	t.Helper()
	img, err := m.CrashImage(k, keep)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestReplayerRestoresWhatTheLastImageUserWrote(t *testing.T) {
	m := recordedRun(t)
	r := m.Replay()
	img, err := r.Image(All)
	if err != nil {
		t.Fatal(err)
	}
	// A recovery run on the image scribbles on it.
	b, _ := img.Slice(40000, 8)
	copy(b, "scribble")
	if err := r.Advance(); err != nil {
		t.Fatal(err)
	}
	img, err = r.Image(None)
	if err != nil {
		t.Fatal(err)
	}
	want := mustImage(t, m, 1, None)
	if !bytes.Equal(img.Bytes(), want) {
		t.Fatal("replayed image at point 1 differs from a fresh crash image")
	}
	if len(img.Kept()) != 0 {
		t.Fatalf("kept %d words with None", len(img.Kept()))
	}
}

func TestRandomSubsetIsReproducibleFromItsSeed(t *testing.T) {
	m := newMedium(t)
	for i := int64(0); i < 64; i++ {
		store(t, m, i*8, uint64(i+1))
	}
	a := mustImage(t, m, 0, Random(42, 0.5))
	b := mustImage(t, m, 0, Random(42, 0.5))
	c := mustImage(t, m, 0, Random(43, 0.5))
	if !bytes.Equal(a, b) {
		t.Fatal("same seed, different images")
	}
	if bytes.Equal(a, c) {
		t.Fatal("different seeds chose the same 64-word subset")
	}
}

func TestCheckpointMakesTheCurrentImagePointZero(t *testing.T) {
	m := recordedRun(t)
	m.Checkpoint()
	if m.Barriers() != 0 || len(m.Pending(0)) != 0 {
		t.Fatal("checkpoint left barriers or pending words")
	}
	if word(mustImage(t, m, 0, None), 16) != 0xd {
		t.Fatal("checkpoint did not make the last store durable")
	}
}

func TestSizeMustBeWholePages(t *testing.T) {
	if _, err := New(4097); err == nil {
		t.Fatal("New accepted a size that is not a multiple of 4096")
	}
}
