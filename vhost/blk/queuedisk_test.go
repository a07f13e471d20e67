package blk

import (
	"errors"
	"testing"

	"github.com/nvblk/nvblk/virtio"
)

func TestHandlerUsesItsQueuesOwnDiskAndGivesItBackOnClose(t *testing.T) {
	shared := newFakeDisk(512, testSectors)
	own := newFakeDisk(512, testSectors)
	released := 0
	dv := NewDevice(shared, Options{QueueDisk: func() (Disk, func(), error) {
		return own, func() { released++ }, nil
	}})
	h := dv.NewHandler()
	c, _ := request{typ: virtio.BlkTOut, sector: 3, out: pattern(512, 5)}.build()
	if h.Handle(c).Written != 1 {
		t.Fatal("write failed")
	}
	wantDisk(t, own, 3*512, pattern(512, 5))
	wantDisk(t, shared, 3*512, make([]byte, 512))
	c, _ = request{typ: virtio.BlkTFlush}.build()
	if h.Handle(c).Written != 1 || own.flushes != 1 || shared.flushes != 0 {
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
	c, _ := request{typ: virtio.BlkTOut, sector: 1, out: pattern(512, 9)}.build()
	if h.Handle(c).Written != 1 {
		t.Fatal("write failed")
	}
	wantDisk(t, shared, 512, pattern(512, 9))
	h.Close()
}

func TestWriteThroughDeviceOffersNoFlushAndNoWriteCache(t *testing.T) {
	disk := newFakeDisk(512, testSectors)
	back := NewDevice(disk, Options{})
	through := NewDevice(disk, Options{WriteThrough: true})
	if back.Features()&virtio.BlkFFlush == 0 || back.Config()[virtio.BlkCfgWriteback] != 1 {
		t.Fatalf("write-back device: features %#x, writeback %d; want FLUSH and 1", back.Features(), back.Config()[virtio.BlkCfgWriteback])
	}
	if through.Features()&virtio.BlkFFlush != 0 || through.Config()[virtio.BlkCfgWriteback] != 0 {
		t.Fatalf("write-through device: features %#x, writeback %d; want no FLUSH and 0", through.Features(), through.Config()[virtio.BlkCfgWriteback])
	}
}
