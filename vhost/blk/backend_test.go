package blk

import (
	"testing"

	"github.com/nvblk/nvblk/virtio"
)

// TestBackendHoldsDescriptorsToSizeMaxOnlyWhenNegotiated: the server hands
// each queue's handler the driver's features, so a driver that accepted
// SIZE_MAX is held to it and one that did not (OVMF) is not.
func TestBackendHoldsDescriptorsToSizeMaxOnlyWhenNegotiated(t *testing.T) {
	for _, tt := range []struct {
		name     string
		features uint64
		want     byte
	}{
		{"driver accepted SIZE_MAX", virtio.FVersion1 | virtio.BlkFSizeMax, virtio.BlkSIOErr},
		{"driver declined SIZE_MAX", virtio.FVersion1, virtio.BlkSOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			disk := &nullDisk{}
			be := NewBackend(NewDevice(disk, Options{SizeMax: 64 << 10}), disk)
			c, status := limitReq(virtio.BlkTIn, pieces(1, 128<<10))
			be.NewHandler(tt.features).Handle(c)
			if status[0] != tt.want {
				t.Errorf("status %d for a 128 KiB descriptor over a 64 KiB size_max, want %d", status[0], tt.want)
			}
		})
	}
}
