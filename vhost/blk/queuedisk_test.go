package blk

import (
	"errors"
	"testing"
)

func TestHandlerUsesItsQueuesOwnDiskAndGivesItBackOnClose(t *testing.T) {
	shared := newFakeDisk(512, testSectors)
	own := newFakeDisk(512, testSectors)
	released := 0
	dv := NewDevice(shared, Options{QueueDisk: func() (Disk, func(), error) {
		return own, func() { released++ }, nil
	}})
	h := dv.NewHandler()
	c, _ := request{typ: typeOut, sector: 3, out: pattern(512, 5)}.build()
	if h.Handle(c) != 1 {
		t.Fatal("write failed")
	}
	wantDisk(t, own, 3*512, pattern(512, 5))
	wantDisk(t, shared, 3*512, make([]byte, 512))
	c, _ = request{typ: typeFlush}.build()
	if h.Handle(c) != 1 || own.flushes != 1 || shared.flushes != 0 {
		t.Fatalf("flush went to the shared disk (own %d, shared %d)", own.flushes, shared.flushes)
	}
	h.Close()
	h.Close()
	if released != 1 {
		t.Fatalf("released %d times, want once", released)
	}
}

func TestHandlerFallsBackToTheSharedDiskWhenNoQueueDiskIsLeft(t *testing.T) {
	shared := newFakeDisk(512, testSectors)
	dv := NewDevice(shared, Options{QueueDisk: func() (Disk, func(), error) {
		return nil, nil, errors.New("no lane left")
	}})
	h := dv.NewHandler()
	c, _ := request{typ: typeOut, sector: 1, out: pattern(512, 9)}.build()
	if h.Handle(c) != 1 {
		t.Fatal("write failed")
	}
	wantDisk(t, shared, 512, pattern(512, 9))
	h.Close()
}

func TestWriteThroughDeviceOffersNoFlushAndNoWriteCache(t *testing.T) {
	disk := newFakeDisk(512, testSectors)
	back := NewDevice(disk, Options{})
	through := NewDevice(disk, Options{WriteThrough: true})
	if back.Features()&FeatureFlush == 0 || back.Config()[cfgWriteback] != 1 {
		t.Fatalf("write-back device: features %#x, writeback %d; want FLUSH and 1", back.Features(), back.Config()[cfgWriteback])
	}
	if through.Features()&FeatureFlush != 0 || through.Config()[cfgWriteback] != 0 {
		t.Fatalf("write-through device: features %#x, writeback %d; want no FLUSH and 0", through.Features(), through.Config()[cfgWriteback])
	}
}
