package btt

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mmapMedium is memMedium over an anonymous mapping, whose pages a test
// can make fault (mprotect), as a truncated file or a full filesystem
// makes a real medium's pages fault.
type mmapMedium struct{ memMedium }

func newMmapMedium(t *testing.T, size int64) *mmapMedium {
	t.Helper()
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return &mmapMedium{memMedium{buf: b}}
}

// protect sets the protection of the pages holding [off, off+n).
func (m *mmapMedium) protect(t *testing.T, off, n int64, prot int) {
	t.Helper()
	lo, hi := off&^(pageSize-1), (off+n+pageSize-1)&^(pageSize-1)
	if err := unix.Mprotect(m.buf[lo:hi], prot); err != nil {
		t.Fatal(err)
	}
}

// faultingBuffer is a sector-sized buffer any access to which faults, as
// guest memory the front-end shrank does.
func faultingBuffer(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// faultDevice is a fresh 4 KiB-sector BTT on an mmapMedium, with LBA 5
// written.
func faultDevice(t *testing.T) (*mmapMedium, *Device) {
	t.Helper()
	m := newMmapMedium(t, 32<<20)
	if err := Format(m, FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteV(5, [][]byte{pattern(4096, 5, 1)}); err != nil {
		t.Fatal(err)
	}
	return m, d
}

// blockOff is where LBA lba's block lies in the medium.
func blockOff(d *Device, lba uint64) int64 {
	a, premap := d.locate(lba)
	block, _, _ := a.lookup(premap)
	return a.dataOff + int64(block)*int64(a.internalLBASize)
}

func mustBeConsistent(t *testing.T, m Medium) {
	t.Helper()
	rep, err := Check(m, CheckOptions{})
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if !rep.Consistent {
		t.Fatalf("check: inconsistent: %+v", rep.Problems)
	}
}

// snapshot copies the arena's flog and map, to show a write left them alone.
func snapshot(a *arena) []byte {
	return append(bytes.Clone(a.flogArea), a.mapArea...)
}

func TestReadThatFaultsInTheMediumMarksTheSectorAsAMediaError(t *testing.T) {
	m, d := faultDevice(t)
	m.protect(t, blockOff(d, 5), 4096, unix.PROT_NONE)

	err := d.ReadV(5, [][]byte{make([]byte, 4096)})
	if !errors.Is(err, ErrMediaFault) {
		t.Fatalf("read of a block that faults: %v, want ErrMediaFault", err)
	}
	t.Log(err)
	if _, _, mediaErr := d.arenaList()[0].lookup(5); !mediaErr {
		t.Fatal("the sector's map entry has no error flag after its read faulted")
	}
	// From now on the sector reads as a media error: its block is not
	// touched again, so it faults no more.
	if err := d.ReadV(5, [][]byte{make([]byte, 4096)}); !errors.Is(err, ErrMediaError) {
		t.Fatalf("second read: %v, want ErrMediaError", err)
	}
	if err := d.ReadV(4, [][]byte{make([]byte, 4096)}); err != nil {
		t.Fatalf("a neighbour whose block is fine: %v", err)
	}
	mustBeConsistent(t, m)
}

func TestWriteClearsTheMediaErrorAFaultingReadSet(t *testing.T) {
	m, d := faultDevice(t)
	m.protect(t, blockOff(d, 5), 4096, unix.PROT_NONE)
	d.ReadV(5, [][]byte{make([]byte, 4096)})

	// The write goes to a lane's free block, not the one that faulted.
	want := pattern(4096, 5, 2)
	if err := d.WriteV(5, [][]byte{want}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := d.ReadV(5, [][]byte{got}); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the rewrite: err %v, same data %v", err, bytes.Equal(got, want))
	}
	mustBeConsistent(t, m)
}

func TestReadThatFaultsClearsItsReadTrackingSlot(t *testing.T) {
	m, d := faultDevice(t)
	faulty := blockOff(d, 5)
	m.protect(t, faulty, 4096, unix.PROT_NONE)
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Release()

	// A read of sectors 4..6 publishes 5's block, then faults on it.
	if err := ln.ReadV(4, [][]byte{make([]byte, 3*4096)}); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("read: %v, want ErrMediaFault", err)
	}
	quiescent(t, d)
	// Rewriting 5 makes the block that faulted this lane's free block; the
	// lane's next write waits until no reader publishes that block, which
	// is forever if the faulted read still did.
	m.protect(t, faulty, 4096, unix.PROT_READ|unix.PROT_WRITE)
	if err := ln.WriteV(5, [][]byte{pattern(4096, 5, 2)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ln.WriteV(9, [][]byte{pattern(4096, 9, 1)}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write into the block of the faulted read waits for that read")
	}
	mustBeConsistent(t, m)
}

func TestWriteWhoseDataCopyFaultsIsAbandonedBeforeTheFlog(t *testing.T) {
	m, d := faultDevice(t)
	ln, err := d.AcquireLane()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Release()
	a := d.arenaList()[0]
	free := a.free[ln.l.id]
	freeOff := a.dataOff + int64(free.block)*int64(a.internalLBASize)
	m.protect(t, freeOff, 4096, unix.PROT_READ)
	before := snapshot(a)

	if err := ln.WriteV(5, [][]byte{pattern(4096, 5, 2)}); !errors.Is(err, ErrMediaFault) || errors.Is(err, ErrArenaFailed) {
		t.Fatalf("write into a free block that faults: %v, want ErrMediaFault only", err)
	}
	if !bytes.Equal(before, snapshot(a)) || a.free[ln.l.id] != free {
		t.Fatal("the abandoned write changed the flog, the map or the lane's free block")
	}
	if got := make([]byte, 4096); ln.ReadV(5, [][]byte{got}) != nil || !bytes.Equal(got, pattern(4096, 5, 1)) {
		t.Fatal("the sector lost its old content")
	}
	// The block comes back (space freed, file extended): the same lane
	// writes through it.
	m.protect(t, freeOff, 4096, unix.PROT_READ|unix.PROT_WRITE)
	if err := ln.WriteV(5, [][]byte{pattern(4096, 5, 2)}); err != nil {
		t.Fatal(err)
	}
	mustBeConsistent(t, m)
}

func TestWritesWhoseDataCopyFaultsGiveTheirLanesBack(t *testing.T) {
	m, d := faultDevice(t)
	a := d.arenaList()[0]
	m.protect(t, a.dataOff, int64(len(a.dataArea)), unix.PROT_READ)

	// More faulting writes than the device has lanes: one lane kept by a
	// fault would stop them all.
	for i := range DefaultNFree + 10 {
		if err := d.WriteV(uint64(i%50), [][]byte{make([]byte, 4096)}); !errors.Is(err, ErrMediaFault) {
			t.Fatalf("write %d: %v, want ErrMediaFault", i, err)
		}
	}
	m.protect(t, a.dataOff, int64(len(a.dataArea)), unix.PROT_READ|unix.PROT_WRITE)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	mustBeConsistent(t, m)
}

func TestWriteWhoseMapPageCannotBeStoredIsAbandonedBeforeTheFlog(t *testing.T) {
	m, d := faultDevice(t)
	a := d.arenaList()[0]
	m.protect(t, a.mapOff, 4096, unix.PROT_READ) // a hole a full filesystem cannot fill
	before := snapshot(a)

	// The map entry is stored back unchanged before the flog entry, so
	// the fault comes while the write is still only data in a free block.
	if err := d.WriteV(5, [][]byte{pattern(4096, 5, 2)}); !errors.Is(err, ErrMediaFault) || errors.Is(err, ErrArenaFailed) {
		t.Fatalf("write whose map page faults: %v, want ErrMediaFault only", err)
	}
	if !bytes.Equal(before, snapshot(a)) {
		t.Fatal("the abandoned write changed the flog or the map")
	}
	m.protect(t, a.mapOff, 4096, unix.PROT_READ|unix.PROT_WRITE)
	if err := d.WriteV(5, [][]byte{pattern(4096, 5, 2)}); err != nil {
		t.Fatalf("write once the map page is back: %v", err)
	}
	mustBeConsistent(t, m)
}

func TestWriteWhoseFlogStoreFaultsFailsTheArenaForWritesOnly(t *testing.T) {
	m, d := faultDevice(t)
	a := d.arenaList()[0]
	m.protect(t, a.logOff, int64(len(a.flogArea)), unix.PROT_READ)

	err := d.WriteV(6, [][]byte{pattern(4096, 6, 1)})
	if !errors.Is(err, ErrMediaFault) || !errors.Is(err, ErrArenaFailed) {
		t.Fatalf("write whose flog store faults: %v, want ErrMediaFault and ErrArenaFailed", err)
	}
	t.Log(err)
	m.protect(t, a.logOff, int64(len(a.flogArea)), unix.PROT_READ|unix.PROT_WRITE)
	// Refused even with the flog back: the free list is not trusted until
	// the device is reopened. LBA 7 shares LBA 6's map lock, which the
	// fault must not have kept.
	if err := d.WriteV(7, [][]byte{make([]byte, 4096)}); !errors.Is(err, ErrArenaFailed) {
		t.Fatalf("write after the arena failed: %v, want ErrArenaFailed", err)
	}
	if err := d.WriteZeroes(7, 1); !errors.Is(err, ErrArenaFailed) {
		t.Fatalf("write zeroes after the arena failed: %v, want ErrArenaFailed", err)
	}
	if !errors.Is(d.Failed(), ErrArenaFailed) {
		t.Fatalf("Failed: %v", d.Failed())
	}
	if got := make([]byte, 4096); d.ReadV(5, [][]byte{got}) != nil || !bytes.Equal(got, pattern(4096, 5, 1)) {
		t.Fatal("reads stopped, or read the wrong data, after the arena failed")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteV(6, [][]byte{pattern(4096, 6, 2)}); err != nil {
		t.Fatalf("write after reopening: %v", err)
	}
	mustBeConsistent(t, m)
}

func TestReadIntoABufferThatFaultsLeavesTheSectorUnmarked(t *testing.T) {
	m, d := faultDevice(t)
	err := d.ReadV(5, [][]byte{faultingBuffer(t, 4096)})
	if !errors.Is(err, ErrBufferFault) {
		t.Fatalf("read into a buffer that faults: %v, want ErrBufferFault", err)
	}
	t.Log(err)
	quiescent(t, d)
	if got := make([]byte, 4096); d.ReadV(5, [][]byte{got}) != nil || !bytes.Equal(got, pattern(4096, 5, 1)) {
		t.Fatal("the sector does not read back after the caller's buffer faulted")
	}
	mustBeConsistent(t, m)
}

func TestWriteFromABufferThatFaultsChangesNothing(t *testing.T) {
	m, d := faultDevice(t)
	a := d.arenaList()[0]
	before := snapshot(a)
	if err := d.WriteV(5, [][]byte{faultingBuffer(t, 4096)}); !errors.Is(err, ErrBufferFault) {
		t.Fatalf("write from a buffer that faults: %v, want ErrBufferFault", err)
	}
	if !bytes.Equal(before, snapshot(a)) || d.Failed() != nil {
		t.Fatal("a write whose buffer faulted changed the flog or the map, or failed the arena")
	}
	if got := make([]byte, 4096); d.ReadV(5, [][]byte{got}) != nil || !bytes.Equal(got, pattern(4096, 5, 1)) {
		t.Fatal("the sector lost its old content")
	}
	mustBeConsistent(t, m)
}

func TestWriteZeroesWhoseMapFaultsFailsOnlyThatRequest(t *testing.T) {
	m, d := faultDevice(t)
	a := d.arenaList()[0]
	m.protect(t, a.mapOff, 4096, unix.PROT_READ)
	if err := d.WriteZeroes(5, 1); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("write zeroes whose map store faults: %v, want ErrMediaFault", err)
	}
	m.protect(t, a.mapOff, 4096, unix.PROT_READ|unix.PROT_WRITE)
	if err := d.WriteZeroes(5, 1); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteV(6, [][]byte{make([]byte, 4096)}); err != nil {
		t.Fatal(err)
	}
	mustBeConsistent(t, m)
}

// A panic that is not a memory fault is a bug: it must not be turned into
// an I/O error.
func TestAPanicThatIsNotAFaultIsNotRecovered(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || fmt.Sprint(r) != "not a fault" {
			t.Fatalf("recovered %v, want the original panic", r)
		}
	}()
	faultAddr("not a fault")
}
