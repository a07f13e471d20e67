package blk

import (
	"encoding/binary"

	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// Handler executes requests for one queue. It is reusable and, after its
// iov has grown to the widest request seen, allocation-free. Not safe for
// concurrent use: one per queue.
type Handler struct {
	dv      *Device
	disk    Disk     // dv's disk, or this queue's own view of it (Options.QueueDisk)
	release func()   // gives disk back, when it is the queue's own
	iov     [][]byte // data windows of the request in flight, into guest memory
}

// NewHandler returns a Handler for one queue of dv.
func (dv *Device) NewHandler() *Handler {
	h := &Handler{dv: dv, disk: dv.disk, iov: make([][]byte, 0, dv.opts.SegMax+2)}
	if dv.opts.QueueDisk != nil {
		if d, release, err := dv.opts.QueueDisk(); err == nil {
			h.disk, h.release = d, release
		}
	}
	return h
}

// Close gives back the queue's own view of the disk, if it has one. The
// Handler must not be used afterwards.
func (h *Handler) Close() {
	if h.release != nil {
		h.release()
		h.release = nil
		h.disk = h.dv.disk
	}
}

// Handle parses the request in c, executes it against the disk, writes the
// status byte and says what it did: Written is the bytes written into
// writable segments (data plus status), 0 when the chain has no place for a
// status byte or no readable 16-byte header (nothing was written then, and
// the request counts as OpOther with StatusOther).
//
// Layout is free ("any layout", virtio 1.2 §2.7.4): the header may span
// descriptors and share one with data; OUT data is every readable byte after
// the header; IN data is every writable byte before the status byte, which is
// the last byte of the last writable segment.
func (h *Handler) Handle(c *virtq.Chain) vhost.Outcome {
	status, ok := c.Status()
	if !ok {
		return vhost.Outcome{Op: vhost.OpOther, Status: vhost.StatusOther}
	}
	var hdr [virtio.BlkReqHeaderSize]byte
	seg, off, ok := readHeader(c.Segments, hdr[:])
	if !ok {
		return vhost.Outcome{Op: vhost.OpOther, Status: vhost.StatusOther}
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])

	var st byte
	var n uint32 // data bytes written to the guest
	o := vhost.Outcome{Op: vhost.OpOther}
	switch typ {
	case virtio.BlkTIn:
		o.Op = vhost.OpRead
		iov, total := h.inData(c.Segments)
		if st = h.dv.readWrite(h.disk, false, sector, iov, total); st == virtio.BlkSOK {
			n, o.Bytes = uint32(total), total
		}
	case virtio.BlkTOut:
		o.Op = vhost.OpWrite
		iov, total := h.outData(c.Segments, seg, off)
		if st = h.dv.readWrite(h.disk, true, sector, iov, total); st == virtio.BlkSOK {
			o.Bytes = total
		}
	case virtio.BlkTFlush:
		o.Op = vhost.OpFlush
		st = h.dv.flush(h.disk)
	case virtio.BlkTGetID:
		iov, _ := h.inData(c.Segments)
		st, n = h.dv.getID(iov)
	case virtio.BlkTDiscard, virtio.BlkTWriteZeroes:
		iov, total := h.outData(c.Segments, seg, off)
		st = h.dv.zero(h.disk, typ == virtio.BlkTDiscard, iov, total)
	default:
		st = virtio.BlkSUnsupp
	}
	clear(h.iov) // drop references to guest memory between requests
	status[0] = st
	o.Written = n + 1
	o.Status = statusClass(st)
	return o
}

// statusClass is the server's statistics class of a status byte.
func statusClass(st byte) vhost.Status {
	switch st {
	case virtio.BlkSOK:
		return vhost.StatusOK
	case virtio.BlkSIOErr:
		return vhost.StatusIOErr
	case virtio.BlkSUnsupp:
		return vhost.StatusUnsupported
	}
	return vhost.StatusOther
}

// readHeader copies the first len(dst) bytes of the chain into dst. They
// must all be in readable segments. It returns where the bytes after the
// header start.
func readHeader(segs []virtq.Segment, dst []byte) (seg, off int, ok bool) {
	need := dst
	for i, s := range segs {
		if len(need) == 0 {
			return i, 0, true
		}
		if s.Writable {
			return 0, 0, false
		}
		k := copy(need, s.Buf)
		need = need[k:]
		if len(need) == 0 {
			return i, k, true
		}
	}
	return len(segs), 0, len(need) == 0
}

// outData collects the readable bytes from segs[seg][off:] up to the first
// writable segment, as sub-slices of guest memory.
func (h *Handler) outData(segs []virtq.Segment, seg, off int) ([][]byte, uint64) {
	iov := h.iov[:0]
	var total uint64
	for i := seg; i < len(segs) && !segs[i].Writable; i++ {
		b := segs[i].Buf
		if i == seg {
			b = b[off:]
		}
		if len(b) > 0 {
			iov = append(iov, b)
			total += uint64(len(b))
		}
	}
	h.iov = iov
	return iov, total
}

// inData collects every writable byte except the status byte (the last
// byte of the last writable segment), as sub-slices of guest memory.
func (h *Handler) inData(segs []virtq.Segment) ([][]byte, uint64) {
	last := -1
	for i := len(segs) - 1; i >= 0; i-- {
		if segs[i].Writable {
			last = i
			break
		}
	}
	iov := h.iov[:0]
	var total uint64
	for i := 0; i <= last; i++ {
		if !segs[i].Writable {
			continue
		}
		b := segs[i].Buf
		if i == last {
			b = b[:len(b)-1] // Status() guaranteed it is non-empty
		}
		if len(b) > 0 {
			iov = append(iov, b)
			total += uint64(len(b))
		}
	}
	h.iov = iov
	return iov, total
}

// readWrite moves total bytes between iov and the disk at virtio sector.
func (dv *Device) readWrite(disk Disk, write bool, sector uint64, iov [][]byte, total uint64) byte {
	if write && dv.readOnly {
		return virtio.BlkSIOErr
	}
	if total%virtio.BlkSectorSize != 0 || total%uint64(dv.sectorSize) != 0 ||
		sector%dv.perLBA != 0 || !dv.inRange(sector, total/virtio.BlkSectorSize) {
		return virtio.BlkSIOErr
	}
	if total == 0 {
		return virtio.BlkSOK
	}
	lba := sector / dv.perLBA
	var err error
	if write {
		err = disk.WriteV(lba, iov)
	} else {
		err = disk.ReadV(lba, iov)
	}
	if err != nil {
		return virtio.BlkSIOErr
	}
	return virtio.BlkSOK
}

func (dv *Device) flush(disk Disk) byte {
	if disk.Flush() != nil {
		return virtio.BlkSIOErr
	}
	return virtio.BlkSOK
}

// getID writes the serial, NUL-padded to 20 bytes (no terminator when it
// is exactly 20), into as much of iov as there is room for.
func (dv *Device) getID(iov [][]byte) (byte, uint32) {
	src := dv.serial[:]
	var n uint32
	for _, b := range iov {
		if len(src) == 0 {
			break
		}
		k := copy(b, src)
		src = src[k:]
		n += uint32(k)
	}
	if n == 0 {
		return virtio.BlkSIOErr, 0
	}
	return virtio.BlkSOK, n
}

// zero executes DISCARD or WRITE_ZEROES; both become Disk.WriteZeroes,
// whose zeroing is an unmap. Only one segment per request is supported
// (max_discard_seg = max_write_zeroes_seg = 1).
func (dv *Device) zero(disk Disk, discard bool, iov [][]byte, total uint64) byte {
	switch {
	case total == 0 || total%virtio.BlkDWZSegSize != 0:
		return virtio.BlkSIOErr
	case total > virtio.BlkDWZSegSize:
		return virtio.BlkSUnsupp
	}
	var seg [virtio.BlkDWZSegSize]byte
	gather(seg[:], iov)
	sector := binary.LittleEndian.Uint64(seg[0:])
	num := uint64(binary.LittleEndian.Uint32(seg[8:]))
	flags := binary.LittleEndian.Uint32(seg[12:])
	limit := uint64(dv.opts.MaxWriteZeroesSectors)
	if discard {
		limit = uint64(dv.opts.MaxDiscardSectors)
		// §5.2.6.2: unmap is meaningless for discard and MUST be refused.
		if flags != 0 {
			return virtio.BlkSUnsupp
		}
	} else if flags&^virtio.BlkDWZFlagUnmap != 0 {
		return virtio.BlkSUnsupp
	}
	if dv.readOnly || num > limit || !dv.inRange(sector, num) ||
		sector%dv.perLBA != 0 || num%dv.perLBA != 0 {
		return virtio.BlkSIOErr
	}
	if num == 0 {
		return virtio.BlkSOK
	}
	if disk.WriteZeroes(sector/dv.perLBA, num/dv.perLBA) != nil {
		return virtio.BlkSIOErr
	}
	return virtio.BlkSOK
}

// gather copies the start of iov into dst.
func gather(dst []byte, iov [][]byte) {
	for _, b := range iov {
		if len(dst) == 0 {
			return
		}
		dst = dst[copy(dst, b):]
	}
}
