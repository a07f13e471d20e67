package blk

import "encoding/binary"

// virtio_blk_config (virtio 1.2 §5.2.4), little-endian. The whole struct
// through the zoned characteristics is served, so any length the front-end
// asks for with VHOST_USER_GET_CONFIG is covered; fields whose feature is
// not offered read as 0 (or a harmless default) and are ignored by drivers.
const (
	cfgCapacity            = 0  // le64: capacity in 512-byte sectors
	cfgSizeMax             = 8  // le32: max bytes per segment (SIZE_MAX)
	cfgSegMax              = 12 // le32: max segments per request (SEG_MAX)
	cfgCylinders           = 16 // le16: geometry.cylinders (GEOMETRY)
	cfgHeads               = 18 // u8:   geometry.heads
	cfgSectors             = 19 // u8:   geometry.sectors
	cfgBlkSize             = 20 // le32: logical block size (BLK_SIZE)
	cfgPhysicalBlockExp    = 24 // u8:   log2(logical blocks per physical block) (TOPOLOGY)
	cfgAlignmentOffset     = 25 // u8:   offset of first aligned logical block
	cfgMinIOSize           = 26 // le16: suggested minimum I/O size in blocks
	cfgOptIOSize           = 28 // le32: optimal I/O size in blocks
	cfgWriteback           = 32 // u8:   cache mode, 1 = writeback (CONFIG_WCE)
	cfgUnused0             = 33 // u8
	cfgNumQueues           = 34 // le16: request queues (MQ)
	cfgMaxDiscardSectors   = 36 // le32 (DISCARD)
	cfgMaxDiscardSeg       = 40 // le32
	cfgDiscardSectorAlign  = 44 // le32: in 512-byte sectors
	cfgMaxWriteZeroesSecs  = 48 // le32 (WRITE_ZEROES)
	cfgMaxWriteZeroesSeg   = 52 // le32
	cfgWriteZeroesMayUnmap = 56 // u8
	cfgUnused1             = 57 // u8[3]
	cfgMaxSecureEraseSecs  = 60 // le32 (SECURE_ERASE, not offered)
	cfgMaxSecureEraseSeg   = 64 // le32
	cfgSecureEraseAlign    = 68 // le32
	cfgZoned               = 72 // 24 bytes of zoned characteristics (ZONED, not offered)
	configSize             = 96
)

// geometry reported for BIOS-style callers; GEOMETRY itself is not
// offered, the values only keep the field sensible.
const (
	geoHeads   = 16
	geoSectors = 63
)

// buildConfig lays out the configuration space for dv.
func (dv *Device) buildConfig() []byte {
	b := make([]byte, configSize)
	le := binary.LittleEndian
	capacity := dv.capacity // 512-byte sectors
	le.PutUint64(b[cfgCapacity:], capacity)
	le.PutUint32(b[cfgSizeMax:], dv.opts.SizeMax)
	le.PutUint32(b[cfgSegMax:], dv.opts.SegMax)
	le.PutUint16(b[cfgCylinders:], uint16(min(capacity/(geoHeads*geoSectors), 0xffff)))
	b[cfgHeads] = geoHeads
	b[cfgSectors] = geoSectors
	le.PutUint32(b[cfgBlkSize:], dv.sectorSize)
	// Logical block == physical block: BTT writes each sector atomically,
	// there is no larger read-modify-write unit to advertise.
	b[cfgPhysicalBlockExp] = 0
	b[cfgAlignmentOffset] = 0
	le.PutUint16(b[cfgMinIOSize:], 1)
	le.PutUint32(b[cfgOptIOSize:], max(1, pageSize/dv.sectorSize))
	if !dv.opts.WriteThrough {
		b[cfgWriteback] = 1 // writes reach the medium's cache; FLUSH persists them
	}
	le.PutUint16(b[cfgNumQueues:], dv.opts.NumQueues)
	le.PutUint32(b[cfgMaxDiscardSectors:], dv.opts.MaxDiscardSectors)
	le.PutUint32(b[cfgMaxDiscardSeg:], 1)
	le.PutUint32(b[cfgDiscardSectorAlign:], uint32(dv.perLBA))
	le.PutUint32(b[cfgMaxWriteZeroesSecs:], dv.opts.MaxWriteZeroesSectors)
	le.PutUint32(b[cfgMaxWriteZeroesSeg:], 1)
	b[cfgWriteZeroesMayUnmap] = 1 // BTT zeroing is an unmap (Z flag)
	return b
}
