package virtio_test

import (
	"testing"

	"github.com/nvblk/nvblk/virtio"
)

// TestBlkConfigLayoutIsContiguous: every field of struct virtio_blk_config
// starts where the one before it ends, so a mistyped offset shows here
// rather than as a guest reading the wrong field.
func TestBlkConfigLayoutIsContiguous(t *testing.T) {
	fields := []struct {
		name         string
		offset, size int
	}{
		{"capacity", virtio.BlkCfgCapacity, 8},
		{"size_max", virtio.BlkCfgSizeMax, 4},
		{"seg_max", virtio.BlkCfgSegMax, 4},
		{"geometry.cylinders", virtio.BlkCfgCylinders, 2},
		{"geometry.heads", virtio.BlkCfgHeads, 1},
		{"geometry.sectors", virtio.BlkCfgSectors, 1},
		{"blk_size", virtio.BlkCfgBlkSize, 4},
		{"physical_block_exp", virtio.BlkCfgPhysicalBlockExp, 1},
		{"alignment_offset", virtio.BlkCfgAlignmentOffset, 1},
		{"min_io_size", virtio.BlkCfgMinIOSize, 2},
		{"opt_io_size", virtio.BlkCfgOptIOSize, 4},
		{"writeback", virtio.BlkCfgWriteback, 1},
		{"unused0", virtio.BlkCfgWriteback + 1, 1},
		{"num_queues", virtio.BlkCfgNumQueues, 2},
		{"max_discard_sectors", virtio.BlkCfgMaxDiscardSectors, 4},
		{"max_discard_seg", virtio.BlkCfgMaxDiscardSeg, 4},
		{"discard_sector_alignment", virtio.BlkCfgDiscardSectorAlign, 4},
		{"max_write_zeroes_sectors", virtio.BlkCfgMaxWriteZeroesSecs, 4},
		{"max_write_zeroes_seg", virtio.BlkCfgMaxWriteZeroesSeg, 4},
		{"write_zeroes_may_unmap", virtio.BlkCfgWriteZeroesMayUnmap, 1},
		{"unused1", virtio.BlkCfgWriteZeroesMayUnmap + 1, 3},
		{"max_secure_erase_sectors", virtio.BlkCfgMaxSecureEraseSecs, 4},
		{"max_secure_erase_seg", virtio.BlkCfgMaxSecureEraseSeg, 4},
		{"secure_erase_sector_alignment", virtio.BlkCfgSecureEraseAlign, 4},
		{"zoned", virtio.BlkCfgZoned, 24},
	}
	next := 0
	for _, f := range fields {
		if f.offset != next {
			t.Errorf("%s at offset %d, want %d", f.name, f.offset, next)
		}
		next = f.offset + f.size
	}
	if next != virtio.BlkConfigSize {
		t.Errorf("fields end at %d, BlkConfigSize is %d", next, virtio.BlkConfigSize)
	}
}

// TestFeatureBitsAreDistinct: no two feature bits share a position.
func TestFeatureBitsAreDistinct(t *testing.T) {
	bits := []uint64{
		virtio.BlkFSizeMax, virtio.BlkFSegMax, virtio.BlkFGeometry, virtio.BlkFRO,
		virtio.BlkFBlkSize, virtio.BlkFFlush, virtio.BlkFTopology, virtio.BlkFConfigWCE,
		virtio.BlkFMQ, virtio.BlkFDiscard, virtio.BlkFWriteZeroes,
		virtio.FRingIndirectDesc, virtio.FRingEventIdx, virtio.FVersion1, virtio.FRingPacked,
	}
	var seen uint64
	for _, b := range bits {
		if b == 0 || b&(b-1) != 0 || seen&b != 0 {
			t.Errorf("feature bit %#x is not a single new bit", b)
		}
		seen |= b
	}
}
