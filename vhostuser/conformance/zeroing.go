package conformance

import (
	"bytes"
	"encoding/binary"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// zeroCase is one DISCARD or WRITE_ZEROES request and what it must do to a
// 64-sector (32 KiB) run of pattern at the start of the scratch range.
type zeroCase struct {
	Case
	typ  uint32
	feat uint64 // the feature that offers typ
	segs func(base, spb uint64) []zeroSeg
	want byte // status
	// segLimit, if set, is the config offset of the segment limit: a
	// limit below two segments makes UNSUPP the status wanted instead.
	segLimit int
	zeros    bool // the middle must read as zeroes afterwards
	same     bool // the data must be unchanged afterwards
}

// midHalf zeroes the middle half of the run, with flags.
func midHalf(flags uint32) func(base, spb uint64) []zeroSeg {
	return func(base, _ uint64) []zeroSeg { return []zeroSeg{{base + 16, 32, flags}} }
}

// twoBlocks zeroes two separate blocks of the run, a segment each.
func twoBlocks(base, spb uint64) []zeroSeg {
	return []zeroSeg{{base + 16, uint32(spb), 0}, {base + 32, uint32(spb), 0}}
}

// allSectors asks for the most sectors a segment can: far past the disk.
func allSectors(base, _ uint64) []zeroSeg { return []zeroSeg{{base, 0xffffffff, 0}} }

const (
	writeZeroesOp = blkOperation + ": VIRTIO_BLK_T_WRITE_ZEROES"
	discardOp     = blkOperation + ": VIRTIO_BLK_T_DISCARD"
)

var zeroCases = []zeroCase{
	{Case: Case{"io/write-zeroes", blkDeviceMust + ": reads of the range return zeroes"},
		typ: virtio.BlkTWriteZeroes, feat: virtio.BlkFWriteZeroes, segs: midHalf(0), want: virtio.BlkSOK, zeros: true},
	{Case: Case{"io/write-zeroes-unmap", blkDeviceMust + ": zeroes whether unmap was set or clear"},
		typ: virtio.BlkTWriteZeroes, feat: virtio.BlkFWriteZeroes, segs: midHalf(1), want: virtio.BlkSOK, zeros: true},
	{Case: Case{"io/write-zeroes-reserved-flags", blkDeviceMust + ": VIRTIO_BLK_S_UNSUPP for an unknown flag"},
		typ: virtio.BlkTWriteZeroes, feat: virtio.BlkFWriteZeroes, segs: midHalf(2), want: virtio.BlkSUnsupp, same: true},
	{Case: Case{"io/write-zeroes-two-segments", writeZeroesOp + ", max_write_zeroes_seg segments"},
		typ: virtio.BlkTWriteZeroes, feat: virtio.BlkFWriteZeroes, segs: twoBlocks, want: virtio.BlkSOK, segLimit: virtio.BlkCfgMaxWriteZeroesSeg},
	{Case: Case{"io/write-zeroes-num-sectors-max", writeZeroesOp + ", VIRTIO_BLK_S_IOERR"},
		typ: virtio.BlkTWriteZeroes, feat: virtio.BlkFWriteZeroes, segs: allSectors, want: virtio.BlkSIOErr},
	{Case: Case{"io/discard", discardOp},
		typ: virtio.BlkTDiscard, feat: virtio.BlkFDiscard, segs: midHalf(0), want: virtio.BlkSOK},
	{Case: Case{"io/discard-unmap-flag", blkDeviceMust + ": VIRTIO_BLK_S_UNSUPP for discard with unmap"},
		typ: virtio.BlkTDiscard, feat: virtio.BlkFDiscard, segs: midHalf(1), want: virtio.BlkSUnsupp, same: true},
	{Case: Case{"io/discard-reserved-flags", blkDeviceMust + ": VIRTIO_BLK_S_UNSUPP for an unknown flag"},
		typ: virtio.BlkTDiscard, feat: virtio.BlkFDiscard, segs: midHalf(2), want: virtio.BlkSUnsupp, same: true},
	{Case: Case{"io/discard-two-segments", discardOp + ", max_discard_seg segments"},
		typ: virtio.BlkTDiscard, feat: virtio.BlkFDiscard, segs: twoBlocks, want: virtio.BlkSOK, segLimit: virtio.BlkCfgMaxDiscardSeg},
	{Case: Case{"io/discard-num-sectors-max", discardOp + ", VIRTIO_BLK_S_IOERR"},
		typ: virtio.BlkTDiscard, feat: virtio.BlkFDiscard, segs: allSectors, want: virtio.BlkSIOErr},
}

var zeroingCases = casesOf(zeroCases, func(z zeroCase) Case { return z.Case })

func checkZeroing(s *suite) {
	if f, ok := s.needScratch(); !ok {
		for _, c := range zeroCases {
			if !s.has(c.feat) {
				f = s.notOffered(featureName(c.feat))
			}
			s.record(c.Name, f)
		}
		return
	}
	le := binary.LittleEndian
	s.group(frontend.Options{}, caseNames(zeroingCases), func(d *dev) {
		for i, c := range zeroCases {
			if !s.has(c.feat) {
				s.record(c.Name, s.notOffered(featureName(c.feat)))
				continue
			}
			want := c.want
			if c.segLimit != 0 && le.Uint32(s.config[c.segLimit:]) < 2 {
				want = virtio.BlkSUnsupp
			}
			data := pattern(int64(100+i), 32<<10)
			if err := d.write(s.scratch, data); err != nil {
				s.record(c.Name, errFinding("writing the pattern first", err))
				continue
			}
			r, err := d.do(zeroReq(c.typ, c.segs(s.scratch, s.sectorsPerBlock())...))
			f := wantStatus(r, err, want)
			if f.verdict == Pass && (c.zeros || c.same) {
				got, err := d.read(s.scratch, len(data))
				wantData := data
				if c.zeros {
					wantData = append([]byte(nil), data...)
					clear(wantData[16*512 : 48*512])
				}
				switch {
				case err != nil:
					f = errFinding("read back", err)
				case !bytes.Equal(got, wantData) && c.zeros:
					f = failf("sectors 16..48 of the run are not zero, or others changed")
				case !bytes.Equal(got, wantData):
					f = failf("refused with %s but the data changed", statusName(want))
				}
			}
			s.record(c.Name, f)
		}
	})
}
