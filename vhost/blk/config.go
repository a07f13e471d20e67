package blk

import (
	"encoding/binary"

	"github.com/nvblk/nvblk/virtio"
)

// The configuration space is struct virtio_blk_config (virtio 1.2 §5.2.4;
// offsets in package virtio). The whole struct through the zoned
// characteristics is served, so any length the front-end asks for with
// VHOST_USER_GET_CONFIG is covered; fields whose feature is not offered read
// as 0 (or a harmless default) and are ignored by drivers.

// geometry reported for BIOS-style callers; GEOMETRY itself is not
// offered, the values only keep the field sensible.
const (
	geoHeads   = 16
	geoSectors = 63
)

// buildConfig lays out the configuration space for dv.
func (dv *Device) buildConfig() []byte {
	b := make([]byte, virtio.BlkConfigSize)
	le := binary.LittleEndian
	capacity := dv.capacity.Load() // 512-byte sectors
	le.PutUint64(b[virtio.BlkCfgCapacity:], capacity)
	le.PutUint32(b[virtio.BlkCfgSizeMax:], dv.opts.SizeMax)
	le.PutUint32(b[virtio.BlkCfgSegMax:], dv.opts.SegMax)
	le.PutUint16(b[virtio.BlkCfgCylinders:], uint16(min(capacity/(geoHeads*geoSectors), 0xffff)))
	b[virtio.BlkCfgHeads] = geoHeads
	b[virtio.BlkCfgSectors] = geoSectors
	le.PutUint32(b[virtio.BlkCfgBlkSize:], dv.sectorSize)
	// Logical block == physical block: BTT writes each sector atomically,
	// there is no larger read-modify-write unit to advertise.
	b[virtio.BlkCfgPhysicalBlockExp] = 0
	b[virtio.BlkCfgAlignmentOffset] = 0
	le.PutUint16(b[virtio.BlkCfgMinIOSize:], 1)
	le.PutUint32(b[virtio.BlkCfgOptIOSize:], max(1, pageSize/dv.sectorSize))
	if !dv.opts.WriteThrough {
		b[virtio.BlkCfgWriteback] = 1 // writes reach the medium's cache; FLUSH persists them
	}
	le.PutUint16(b[virtio.BlkCfgNumQueues:], dv.opts.NumQueues)
	le.PutUint32(b[virtio.BlkCfgMaxDiscardSectors:], dv.opts.MaxDiscardSectors)
	le.PutUint32(b[virtio.BlkCfgMaxDiscardSeg:], 1)
	le.PutUint32(b[virtio.BlkCfgDiscardSectorAlign:], uint32(dv.perLBA))
	le.PutUint32(b[virtio.BlkCfgMaxWriteZeroesSecs:], dv.opts.MaxWriteZeroesSectors)
	le.PutUint32(b[virtio.BlkCfgMaxWriteZeroesSeg:], 1)
	b[virtio.BlkCfgWriteZeroesMayUnmap] = 1 // BTT zeroing is an unmap (Z flag)
	return b
}
