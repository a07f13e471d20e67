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
	// sizeMax bounds each data descriptor: dv's SIZE_MAX once the driver
	// is known to have negotiated it (SetDriverFeatures), else 0, none.
	sizeMax uint64
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

// SetDriverFeatures tells h the feature bits the driver accepted
// (VHOST_USER_SET_FEATURES); call it before the first Handle. SIZE_MAX binds
// only a driver that negotiated it, and one that did not may well exceed
// it: OVMF reads up to 1 GiB through a single descriptor. So each data
// descriptor is held to SIZE_MAX only once this reports
// VIRTIO_BLK_F_SIZE_MAX; the other limits hold whatever the driver
// negotiated.
func (h *Handler) SetDriverFeatures(features uint64) {
	h.sizeMax = 0
	if features&virtio.BlkFSizeMax != 0 {
		h.sizeMax = uint64(h.dv.opts.SizeMax)
	}
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
//
// A request whose data breaks the device's limits (package doc) is refused
// with IOERR before anything reaches the disk.
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
		iov, total, ok := h.inData(c.Segments)
		if st = h.dv.readWrite(h.disk, false, sector, iov, total, ok); st == virtio.BlkSOK {
			// total <= maxRequestBytes: the used length cannot wrap.
			n, o.Bytes = uint32(total), total
		}
	case virtio.BlkTOut:
		o.Op = vhost.OpWrite
		iov, total, ok := h.outData(c.Segments, seg, off)
		if st = h.dv.readWrite(h.disk, true, sector, iov, total, ok); st == virtio.BlkSOK {
			o.Bytes = total
		}
	case virtio.BlkTFlush:
		o.Op = vhost.OpFlush
		st = h.dv.flush(h.disk)
	case virtio.BlkTGetID:
		if iov, _, ok := h.inData(c.Segments); ok {
			st, n = h.dv.getID(iov)
		} else {
			st = virtio.BlkSIOErr
		}
	case virtio.BlkTDiscard, virtio.BlkTWriteZeroes:
		if iov, total, ok := h.outData(c.Segments, seg, off); ok {
			st = h.dv.zero(h.disk, typ == virtio.BlkTDiscard, iov, total)
		} else {
			st = virtio.BlkSIOErr
		}
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

// dataDescs counts a request's data descriptors as its data pieces are
// collected, and checks them against SEG_MAX and (h.sizeMax) SIZE_MAX. A
// descriptor is a data descriptor when it holds at least one data byte; a
// descriptor virtq split at a guest memory region boundary is one
// descriptor (Segment.Continues), as the driver built it.
type dataDescs struct {
	n    uint32 // data descriptors so far
	size uint64 // data bytes of the last one
	last int    // index of the last piece counted, -1 before the first
}

// add counts k data bytes of segs[i] and reports whether the limits still
// hold.
func (h *Handler) add(d *dataDescs, segs []virtq.Segment, i, k int) bool {
	if segs[i].Continues && d.last == i-1 {
		d.size += uint64(k)
	} else {
		d.n, d.size = d.n+1, uint64(k)
	}
	d.last = i
	return d.n <= h.dv.opts.SegMax && (h.sizeMax == 0 || d.size <= h.sizeMax)
}

// outData collects the readable bytes from segs[seg][off:] up to the first
// writable segment, as sub-slices of guest memory. ok is false, and the
// collecting stops, when they break SEG_MAX or SIZE_MAX.
func (h *Handler) outData(segs []virtq.Segment, seg, off int) (iov [][]byte, total uint64, ok bool) {
	iov = h.iov[:0]
	d := dataDescs{last: -1}
	for i := seg; i < len(segs) && !segs[i].Writable; i++ {
		b := segs[i].Buf
		if i == seg {
			b = b[off:]
		}
		if len(b) > 0 {
			if !h.add(&d, segs, i, len(b)) {
				h.iov = iov // for Handle to clear
				return nil, 0, false
			}
			iov = append(iov, b)
			total += uint64(len(b))
		}
	}
	h.iov = iov
	return iov, total, true
}

// inData collects every writable byte except the status byte (the last
// byte of the last writable segment), as sub-slices of guest memory. ok is
// false, and the collecting stops, when they break SEG_MAX or SIZE_MAX.
func (h *Handler) inData(segs []virtq.Segment) (iov [][]byte, total uint64, ok bool) {
	last := -1
	for i := len(segs) - 1; i >= 0; i-- {
		if segs[i].Writable {
			last = i
			break
		}
	}
	iov = h.iov[:0]
	d := dataDescs{last: -1}
	for i := 0; i <= last; i++ {
		if !segs[i].Writable {
			continue
		}
		b := segs[i].Buf
		if i == last {
			b = b[:len(b)-1] // Status() guaranteed it is non-empty
		}
		if len(b) > 0 {
			if !h.add(&d, segs, i, len(b)) {
				h.iov = iov // for Handle to clear
				return nil, 0, false
			}
			iov = append(iov, b)
			total += uint64(len(b))
		}
	}
	h.iov = iov
	return iov, total, true
}

// readWrite moves total bytes between iov and the disk at virtio sector.
// inLimits is the descriptor check of outData/inData; the byte limit is
// checked here: maxRequestBytes for a read, SegMax × SizeMax for a write.
func (dv *Device) readWrite(disk Disk, write bool, sector uint64, iov [][]byte, total uint64, inLimits bool) byte {
	if !inLimits || total > maxRequestBytes || write && total > dv.maxWrite {
		return virtio.BlkSIOErr
	}
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
