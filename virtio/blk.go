package virtio

// virtio-blk feature bits (virtio 1.2 §5.2.3).
const (
	BlkFSizeMax     uint64 = 1 << 1
	BlkFSegMax      uint64 = 1 << 2
	BlkFGeometry    uint64 = 1 << 4
	BlkFRO          uint64 = 1 << 5
	BlkFBlkSize     uint64 = 1 << 6
	BlkFFlush       uint64 = 1 << 9
	BlkFTopology    uint64 = 1 << 10
	BlkFConfigWCE   uint64 = 1 << 11
	BlkFMQ          uint64 = 1 << 12
	BlkFDiscard     uint64 = 1 << 13
	BlkFWriteZeroes uint64 = 1 << 14
)

// virtio-blk request types (virtio 1.2 §5.2.6, struct virtio_blk_req's
// type field).
const (
	BlkTIn          uint32 = 0
	BlkTOut         uint32 = 1
	BlkTFlush       uint32 = 4
	BlkTGetID       uint32 = 8
	BlkTDiscard     uint32 = 11
	BlkTWriteZeroes uint32 = 13
)

// virtio-blk status byte values (virtio 1.2 §5.2.6).
const (
	BlkSOK     uint8 = 0
	BlkSIOErr  uint8 = 1
	BlkSUnsupp uint8 = 2
)

// Sizes of the virtio-blk request format (virtio 1.2 §5.2.6).
const (
	// BlkSectorSize is the unit of a request's sector field and of the
	// capacity, whatever the disk's block size.
	BlkSectorSize = 512
	// BlkReqHeaderSize is le32 type, le32 reserved, le64 sector.
	BlkReqHeaderSize = 16
	// BlkIDBytes is VIRTIO_BLK_ID_BYTES, the size of a GET_ID answer.
	BlkIDBytes = 20
	// BlkDWZSegSize is struct virtio_blk_discard_write_zeroes: le64
	// sector, le32 num_sectors, le32 flags.
	BlkDWZSegSize = 16
	// BlkDWZFlagUnmap is the unmap bit of its flags.
	BlkDWZFlagUnmap uint32 = 1
)

// struct virtio_blk_config (virtio 1.2 §5.2.4): byte offsets, all fields
// little-endian. The offsets through the zoned characteristics are given,
// so a device can serve the whole struct.
//
//	offset  size  field                           feature
//	0       le64  capacity (512-byte sectors)
//	8       le32  size_max                        SIZE_MAX
//	12      le32  seg_max                         SEG_MAX
//	16      le16  geometry.cylinders              GEOMETRY
//	18      u8    geometry.heads
//	19      u8    geometry.sectors
//	20      le32  blk_size                        BLK_SIZE
//	24      u8    physical_block_exp              TOPOLOGY
//	25      u8    alignment_offset
//	26      le16  min_io_size
//	28      le32  opt_io_size
//	32      u8    writeback                       CONFIG_WCE
//	33      u8    unused0
//	34      le16  num_queues                      MQ
//	36      le32  max_discard_sectors             DISCARD
//	40      le32  max_discard_seg
//	44      le32  discard_sector_alignment
//	48      le32  max_write_zeroes_sectors        WRITE_ZEROES
//	52      le32  max_write_zeroes_seg
//	56      u8    write_zeroes_may_unmap
//	57      u8[3] unused1
//	60      le32  max_secure_erase_sectors        SECURE_ERASE
//	64      le32  max_secure_erase_seg
//	68      le32  secure_erase_sector_alignment
//	72      24    zoned characteristics           ZONED
const (
	BlkCfgCapacity            = 0
	BlkCfgSizeMax             = 8
	BlkCfgSegMax              = 12
	BlkCfgCylinders           = 16
	BlkCfgHeads               = 18
	BlkCfgSectors             = 19
	BlkCfgBlkSize             = 20
	BlkCfgPhysicalBlockExp    = 24
	BlkCfgAlignmentOffset     = 25
	BlkCfgMinIOSize           = 26
	BlkCfgOptIOSize           = 28
	BlkCfgWriteback           = 32
	BlkCfgNumQueues           = 34
	BlkCfgMaxDiscardSectors   = 36
	BlkCfgMaxDiscardSeg       = 40
	BlkCfgDiscardSectorAlign  = 44
	BlkCfgMaxWriteZeroesSecs  = 48
	BlkCfgMaxWriteZeroesSeg   = 52
	BlkCfgWriteZeroesMayUnmap = 56
	BlkCfgMaxSecureEraseSecs  = 60
	BlkCfgMaxSecureEraseSeg   = 64
	BlkCfgSecureEraseAlign    = 68
	BlkCfgZoned               = 72
	// BlkConfigSize is the whole struct, zoned characteristics included.
	BlkConfigSize = 96
	// BlkConfigSizeWriteZeroes is the struct through write_zeroes_may_unmap
	// and its padding: what QEMU 7.2 asks a vhost-user-blk back-end for.
	BlkConfigSizeWriteZeroes = BlkCfgMaxSecureEraseSecs
)
