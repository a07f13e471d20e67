package blk

import (
	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// HandleBadChain answers a chain virtq refused as malformed (vhost's
// BadChainHandler): IOERR in its status byte, the last byte of the last
// writable segment parsed before the fault, so a driver that reads the
// status without looking at the used length still sees the failure. When
// the walk stopped before the real status descriptor, that byte lies in a
// buffer the driver made device-writable for this request, which the device
// may write. Nothing reaches the disk. It returns the bytes written: 1, or 0
// when no writable byte was parsed.
func (h *Handler) HandleBadChain(c *virtq.Chain) uint32 {
	status, ok := c.Status()
	if !ok {
		return 0
	}
	status[0] = virtio.BlkSIOErr
	return 1
}
