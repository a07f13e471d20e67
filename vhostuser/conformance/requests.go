package conformance

import (
	"bytes"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// requestCases are every request type a guest sends, and the error
// statuses for a request the device does not know or that leaves the disk.
var requestCases = []Case{
	{"io/read", blkOperation + ": VIRTIO_BLK_T_IN"},
	{"io/write-read", blkOperation + ": VIRTIO_BLK_T_OUT"},
	{"io/flush", blkOperation + ": VIRTIO_BLK_T_FLUSH"},
	{"io/get-id", blkOperation + ": VIRTIO_BLK_T_GET_ID"},
	{"io/unsupported-type", blkOperation + ": VIRTIO_BLK_S_UNSUPP"},
	{"io/read-past-end", blkOperation + ": VIRTIO_BLK_S_IOERR"},
	{"io/read-straddling-end", blkOperation + ": VIRTIO_BLK_S_IOERR"},
	{"io/write-past-end", blkOperation + ": VIRTIO_BLK_S_IOERR"},
}

func checkRequests(s *suite) {
	s.group(frontend.Options{}, caseNames(requestCases), func(d *dev) {
		n := 16 << 10
		r, err := d.do(readReq(0, n))
		switch {
		case err != nil:
			s.record("io/read", errFinding("read", err))
		case r.status != virtio.BlkSOK:
			s.record("io/read", failf("status %s", statusName(r.status)))
		case r.used != uint32(n+1):
			s.record("io/read", failf("used len %d, want %d (data + status)", r.used, n+1))
		default:
			s.record("io/read", passf("%d bytes at sector 0", n))
		}

		if f, ok := s.needScratch(); !ok {
			s.record("io/write-read", f)
		} else {
			data := pattern(1, 64<<10)
			w, err := d.do(writeReq(s.scratch, data))
			switch {
			case err != nil:
				s.record("io/write-read", errFinding("write", err))
			case w.status != virtio.BlkSOK:
				s.record("io/write-read", failf("write status %s", statusName(w.status)))
			case w.used != 1:
				s.record("io/write-read", failf("write used len %d, want 1 (the status byte)", w.used))
			default:
				got, err := d.read(s.scratch, len(data))
				switch {
				case err != nil:
					s.record("io/write-read", errFinding("read back", err))
				case !bytes.Equal(got, data):
					s.record("io/write-read", failf("read back differs from the data written"))
				default:
					s.record("io/write-read", passf("64 KiB at sector %d", s.scratch))
				}
			}
		}

		if !s.has(virtio.BlkFFlush) {
			s.record("io/flush", s.notOffered("VIRTIO_BLK_F_FLUSH"))
		} else {
			r, err := d.do(rawReq{out: header(virtio.BlkTFlush, 0), inLen: 1})
			s.record("io/flush", wantStatus(r, err, virtio.BlkSOK))
		}

		r, err = d.do(rawReq{out: header(virtio.BlkTGetID, 0), inLen: virtio.BlkIDBytes + 1})
		if f := wantStatus(r, err, virtio.BlkSOK); f.verdict != Pass {
			s.record("io/get-id", f)
		} else {
			id := r.in[:virtio.BlkIDBytes]
			if i := bytes.IndexByte(id, 0); i >= 0 {
				id = id[:i]
			}
			s.record("io/get-id", passf("serial %q", id))
		}

		// Type 0x7e is no request type; even, so no legacy device takes it for a write.
		r, err = d.do(rawReq{out: header(0x7e, 0), inLen: 512 + 1})
		s.record("io/unsupported-type", wantStatus(r, err, virtio.BlkSUnsupp))

		blk := int(s.blkSize)
		r, err = d.do(readReq(s.capacity, blk))
		s.record("io/read-past-end", wantStatus(r, err, virtio.BlkSIOErr))
		r, err = d.do(readReq(s.capacity-s.sectorsPerBlock(), 2*blk))
		s.record("io/read-straddling-end", wantStatus(r, err, virtio.BlkSIOErr))
		if f, ok := s.needScratch(); !ok {
			s.record("io/write-past-end", f)
		} else {
			r, err = d.do(writeReq(s.capacity, make([]byte, blk)))
			s.record("io/write-past-end", wantStatus(r, err, virtio.BlkSIOErr))
		}
	})
}

// readOnlyCases hold a device that offers VIRTIO_BLK_F_RO to refusing
// every write.
var readOnlyCases = []Case{
	{"readonly/write-refused", blkDeviceMust + ": VIRTIO_BLK_F_RO"},
	{"readonly/write-zeroes-refused", blkDeviceMust + ": VIRTIO_BLK_F_RO"},
}

func checkReadOnly(s *suite) {
	names := caseNames(readOnlyCases)
	if !s.has(virtio.BlkFRO) {
		for _, n := range names {
			s.record(n, s.notOffered("VIRTIO_BLK_F_RO"))
		}
		return
	}
	s.group(frontend.Options{}, names, func(d *dev) {
		blk := int(s.blkSize)
		cur, err := d.read(0, blk)
		if err != nil {
			for _, n := range names {
				s.record(n, errFinding("read", err))
			}
			return
		}
		// The bytes written are the ones already there: harmless if obeyed.
		r, err := d.do(writeReq(0, cur))
		s.record(names[0], wantStatus(r, err, virtio.BlkSIOErr))
		switch {
		case !s.has(virtio.BlkFWriteZeroes):
			s.record(names[1], s.notOffered("VIRTIO_BLK_F_WRITE_ZEROES"))
		case !bytes.Equal(cur, make([]byte, blk)):
			s.record(names[1], skipf("sector 0 holds data: zeroing it is not risked"))
		default:
			r, err := d.do(zeroReq(virtio.BlkTWriteZeroes, zeroSeg{0, uint32(s.sectorsPerBlock()), 0}))
			s.record(names[1], wantStatus(r, err, virtio.BlkSIOErr))
		}
	})
}
