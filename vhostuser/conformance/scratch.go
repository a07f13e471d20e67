package conformance

import (
	"fmt"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// scratchBytes is the size of the range at the end of the disk that a
// destructive run writes.
const scratchBytes = 256 << 10

// The scratch cases are the suite's own reads before, and writes after, a
// destructive run: a back-end that fails them fails their clause as it
// would any other case's.
var (
	scratchBackup  = Case{"scratch/backup", blkOperation + ": VIRTIO_BLK_T_IN"}
	scratchRestore = Case{"scratch/restore", blkOperation + ": VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH"}
)

// chooseScratch decides whether destructive cases may write, and where.
func (s *suite) chooseScratch() {
	const scratchSectors = scratchBytes / virtio.BlkSectorSize
	switch {
	case !s.opts.Destructive:
		s.scratchWhy = "writes data: needs --destructive"
	case s.has(virtio.BlkFRO):
		s.scratchWhy = "read-only device"
	case s.capacity < 4*scratchSectors:
		s.scratchWhy = fmt.Sprintf("disk of %d sectors is too small for a scratch range", s.capacity)
	default:
		s.scratch = (s.capacity - scratchSectors) / s.sectorsPerBlock() * s.sectorsPerBlock()
		s.scratchOK = true
	}
}

// needScratch reports whether writes to the scratch range are allowed, and
// the skip finding if not.
func (s *suite) needScratch() (finding, bool) { return skipf("%s", s.scratchWhy), s.scratchOK }

func (s *suite) backupScratch() {
	if !s.scratchOK {
		return
	}
	f := s.withDev(frontend.Options{}, func(d *dev) finding {
		var b []byte
		for off := 0; off < scratchBytes; off += maxData {
			part, err := d.read(s.scratch+uint64(off/virtio.BlkSectorSize), min(maxData, scratchBytes-off))
			if err != nil {
				return errFinding("reading the scratch range", err)
			}
			b = append(b, part...)
		}
		s.backup = b
		return passf("%d bytes at sector %d saved", len(b), s.scratch)
	})
	s.record(scratchBackup.Name, f)
	if f.verdict != Pass {
		s.scratchOK, s.scratchWhy = false, "the scratch range could not be saved"
	}
}

func (s *suite) restoreScratch() {
	if s.backup == nil {
		return
	}
	s.record(scratchRestore.Name, s.withDev(frontend.Options{}, func(d *dev) finding {
		for off := 0; off < len(s.backup); off += maxData {
			if err := d.write(s.scratch+uint64(off/virtio.BlkSectorSize), s.backup[off:min(off+maxData, len(s.backup))]); err != nil {
				return errFinding("restoring the scratch range", err)
			}
		}
		if s.has(virtio.BlkFFlush) {
			if r, err := d.do(rawReq{out: header(virtio.BlkTFlush, 0), inLen: 1}); err != nil || r.status != virtio.BlkSOK {
				return failf("flush after restoring: %v status %s", err, statusName(r.status))
			}
		}
		return passf("%d bytes at sector %d written back", len(s.backup), s.scratch)
	}))
}
