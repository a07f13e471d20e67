package blk

import (
	"testing"

	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

func TestHandleBadChain(t *testing.T) {
	tests := []struct {
		name    string
		segs    []virtq.Segment
		written uint32
	}{
		{"no segment", nil, 0},
		{"only readable", []virtq.Segment{{Buf: make([]byte, 16)}}, 0},
		{"empty writable", []virtq.Segment{{Buf: make([]byte, 16)}, {Buf: []byte{}, Writable: true}}, 0},
		{"status parsed", []virtq.Segment{{Buf: make([]byte, 16)}, {Buf: []byte{0xee, 0xff}, Writable: true}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disk := newFakeDisk(512, testSectors)
			h := NewDevice(disk, Options{}).NewHandler()
			c := &virtq.Chain{Segments: tt.segs}
			if got := h.HandleBadChain(c); got != tt.written {
				t.Fatalf("written %d, want %d", got, tt.written)
			}
			if st, ok := c.Status(); ok != (tt.written == 1) || ok && (st[0] != virtio.BlkSIOErr || c.Segments[1].Buf[0] != 0xee) {
				t.Fatalf("status %v ok %v; want IOERR in the last byte only", st, ok)
			}
			if disk.contract != nil {
				t.Fatalf("disk contract violated: %v", disk.contract)
			}
		})
	}
}
