package blk

import (
	"testing"

	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// TestHandleReportsItsOutcome: the handler itself tells the server what each
// request was, how much data it moved and how it ended, so the server's
// statistics need no second question to the device.
func TestHandleReportsItsOutcome(t *testing.T) {
	for _, tt := range []struct {
		name string
		req  request
		fail bool
		want vhost.Outcome
	}{
		{"read", request{typ: virtio.BlkTIn, in: 1024}, false,
			vhost.Outcome{Written: 1025, Op: vhost.OpRead, Bytes: 1024, Status: vhost.StatusOK}},
		{"write", request{typ: virtio.BlkTOut, out: make([]byte, 512)}, false,
			vhost.Outcome{Written: 1, Op: vhost.OpWrite, Bytes: 512, Status: vhost.StatusOK}},
		{"flush", request{typ: virtio.BlkTFlush}, false,
			vhost.Outcome{Written: 1, Op: vhost.OpFlush, Status: vhost.StatusOK}},
		{"failed read moves nothing", request{typ: virtio.BlkTIn, in: 512}, true,
			vhost.Outcome{Written: 1, Op: vhost.OpRead, Status: vhost.StatusIOErr}},
		{"unknown type", request{typ: 99}, false,
			vhost.Outcome{Written: 1, Op: vhost.OpOther, Status: vhost.StatusUnsupported}},
		{"get id", request{typ: virtio.BlkTGetID, in: virtio.BlkIDBytes}, false,
			vhost.Outcome{Written: virtio.BlkIDBytes + 1, Op: vhost.OpOther, Status: vhost.StatusOK}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			disk := newFakeDisk(512, testSectors)
			disk.failAll = tt.fail
			h := NewDevice(disk, Options{Serial: "outcome"}).NewHandler()
			c, _ := tt.req.build()
			if got := h.Handle(c); got != tt.want {
				t.Errorf("outcome %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestHandleWithoutStatusByteReportsOther: a chain with nowhere to put a
// status is counted apart from every real status.
func TestHandleWithoutStatusByteReportsOther(t *testing.T) {
	h := NewDevice(newFakeDisk(512, testSectors), Options{}).NewHandler()
	got := h.Handle(&virtq.Chain{Segments: []virtq.Segment{{Buf: make([]byte, 16)}}})
	if want := (vhost.Outcome{Op: vhost.OpOther, Status: vhost.StatusOther}); got != want {
		t.Errorf("outcome %+v, want %+v", got, want)
	}
}
