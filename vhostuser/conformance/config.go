package conformance

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// configCases check the config space read at connect, and a read of one
// field of it.
var configCases = []Case{
	{"config/get-config", `virtio 1.2 §5.2.4 "Device configuration layout"`},
	{"config/read-at-offset", `vhost-user "Virtio device config space": offset`},
}

func checkConfig(s *suite) {
	le := binary.LittleEndian
	cfg := s.config
	var problems []string
	if s.capacity == 0 {
		problems = append(problems, "capacity 0")
	}
	if s.has(virtio.BlkFBlkSize) {
		if bs := le.Uint32(cfg[virtio.BlkCfgBlkSize:]); bs != s.blkSize {
			problems = append(problems, fmt.Sprintf("blk_size %d is not a power of two in 512..65536", bs))
		}
	}
	if s.capacity%s.sectorsPerBlock() != 0 {
		problems = append(problems, fmt.Sprintf("capacity %d not a whole number of %d-byte blocks", s.capacity, s.blkSize))
	}
	if s.has(virtio.BlkFSegMax) && le.Uint32(cfg[virtio.BlkCfgSegMax:]) == 0 {
		problems = append(problems, "seg_max 0")
	}
	if s.has(virtio.BlkFMQ) {
		if n := int(le.Uint16(cfg[virtio.BlkCfgNumQueues:])); n < 1 || (s.protoHas(vhostuser.ProtoMQ) && n > s.queues) {
			problems = append(problems, fmt.Sprintf("num_queues %d (GET_QUEUE_NUM %d)", n, s.queues))
		}
	}
	if s.has(virtio.BlkFDiscard) && (le.Uint32(cfg[virtio.BlkCfgMaxDiscardSectors:]) == 0 || le.Uint32(cfg[virtio.BlkCfgMaxDiscardSeg:]) == 0) {
		problems = append(problems, "DISCARD offered with max_discard_sectors or max_discard_seg 0")
	}
	if s.has(virtio.BlkFWriteZeroes) && (le.Uint32(cfg[virtio.BlkCfgMaxWriteZeroesSecs:]) == 0 || le.Uint32(cfg[virtio.BlkCfgMaxWriteZeroesSeg:]) == 0) {
		problems = append(problems, "WRITE_ZEROES offered with max_write_zeroes_sectors or max_write_zeroes_seg 0")
	}
	if len(problems) > 0 {
		s.record("config/get-config", failf("%s", strings.Join(problems, "; ")))
	} else {
		s.record("config/get-config", passf("capacity %d sectors, blk_size %d", s.capacity, s.blkSize))
	}
	// A front-end may read one field: offset 20, 4 bytes is blk_size.
	s.record("config/read-at-offset", s.withDev(frontend.Options{}, func(d *dev) finding {
		b, err := d.Conn.GetConfig(virtio.BlkCfgBlkSize, 4)
		if err != nil {
			return errFinding("GET_CONFIG offset 20 size 4", err)
		}
		if !bytes.Equal(b, cfg[virtio.BlkCfgBlkSize:virtio.BlkCfgBlkSize+4]) {
			return failf("GET_CONFIG offset 20 size 4 = % x, the full read has % x there", b, cfg[virtio.BlkCfgBlkSize:virtio.BlkCfgBlkSize+4])
		}
		return pass()
	}))
}
