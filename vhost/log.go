package vhost

// Dirty logging for live migration: QEMU docs/interop/vhost-user.rst,
// "Migration", and VHOST_USER_SET_LOG_BASE.
//
// While QEMU migrates a guest it copies guest RAM to the destination in
// passes, and must copy again every page written since it last copied it.
// It sees the guest's own writes; ours it learns from a bitmap it shares
// with us (SET_LOG_BASE, a memfd): one bit per 4 KiB page of guest-physical
// memory, page p at byte p/8, bit p%8. While VHOST_F_LOG_ALL is negotiated
// (SET_FEATURES turns it on and off while the rings run) every byte the
// device writes into guest memory is marked there: the device-writable
// buffers of each chain it completes (IN data, the status byte, GET_ID's
// answer: the whole writable range, marking more than was written being
// allowed), and, for a ring set up with VHOST_VRING_F_LOG, its used ring
// at log_guest_addr.
//
// Ordering. QEMU reads the bitmap by exchanging each word with zero and
// then copies the pages whose bits were set, so a page must be marked
// after the write to it, or QEMU could clear the bit, copy the page, and
// only then see the write land, never to copy it again. Each mark is an
// atomic OR (sync/atomic, sequentially consistent: a full barrier on
// every platform), so the device's plain stores to the page are visible
// before the bit is. The worker marks a chain's buffers after its handler
// returned and before the used element is pushed; virtq marks each used
// ring store right after it (the used element before used.idx is stored,
// used.idx after). By the time GET_VRING_BASE answers (the rings are
// stopped and QEMU reads the log a last time) every write is marked.
//
// Zero cost without logging: a worker started while logging is off has no
// log (nil), and each place that marks tests that pointer first.
//
// Bounds. The log is the front-end's: its size and offset come off the
// socket. SET_LOG_BASE refuses a log that is empty, larger than maxLogSize,
// too small for the memory table (the log "covers from address 0 to the
// maximum of guest regions"), not 4-byte aligned in its file (it is updated
// a 32-bit word at a time), or not inside the fd. A mark past the log's
// end (a used ring whose log_guest_addr lies beyond it, a memory table
// that grew past the log) marks nothing: the write it stands for has been
// done already, and failing the request would not undo it but would turn
// the front-end's bookkeeping error into a guest I/O error. The first such
// mark of each log is logged; all are counted (SessionInfo.LogOutside).

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
)

// maxLogSize bounds a dirty log: the bitmap of 2^48 bytes (256 TiB) of
// guest-physical address space, 8 GiB. It is only ever mapped, never
// allocated, and QEMU sizes its log to the guest's highest address.
const maxLogSize = 1 << 48 / vhostuser.LogPageSize / 8

// logBytesFor is how many bytes of log cover guest-physical addresses
// [0, end).
func logBytesFor(end uint64) uint64 {
	pages := end/vhostuser.LogPageSize + min(end%vhostuser.LogPageSize, 1)
	return pages/8 + min(pages%8, 1)
}

// hostLittleEndian is whether a word's lowest-addressed byte holds its low
// bits: the log is an array of bytes, marked a 32-bit word at a time.
var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// dirtyLog is a mapped SET_LOG_BASE log. Any number of workers mark it at
// once, and so does nobody else on our side; the front-end clears it.
type dirtyLog struct {
	mapping []byte   // the whole mmap, for munmap and fault.go
	words   []uint32 // the log, size bytes rounded up to whole words
	size    uint64   // bytes of log: it covers pages [0, 8*size)
	log     *logrus.Entry
	// outside counts marks past the log's end (the session's count, which
	// outlives the log; nil: not counted); warned is set when the first
	// of this log's was logged.
	outside *atomic.Uint64
	warned  atomic.Bool
}

// newDirtyLog maps the log l describes from fd (which the caller closes)
// after checking it against the memory table's highest guest address
// (memEnd, 0 without a table).
func newDirtyLog(l vhostuser.Log, fd int, memEnd uint64, lg *logrus.Entry, outside *atomic.Uint64) (*dirtyLog, error) {
	switch {
	case l.MmapSize == 0:
		return nil, fmt.Errorf("%w: size 0", ErrBadLog)
	case l.MmapSize > maxLogSize:
		return nil, fmt.Errorf("%w: size %#x over the %#x bytes that cover 256 TiB of guest memory", ErrBadLog, l.MmapSize, uint64(maxLogSize))
	case l.MmapOffset%4 != 0:
		return nil, fmt.Errorf("%w: offset %#x not 4-byte aligned", ErrBadLog, l.MmapOffset)
	case l.MmapOffset+l.MmapSize < l.MmapOffset:
		return nil, fmt.Errorf("%w: offset %#x + size %#x overflows", ErrBadLog, l.MmapOffset, l.MmapSize)
	case l.MmapSize < logBytesFor(memEnd):
		return nil, fmt.Errorf("%w: %#x bytes log guest memory below %#x; the memory table reaches %#x",
			ErrBadLog, l.MmapSize, l.MmapSize*8*vhostuser.LogPageSize, memEnd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%w: fstat: %w", ErrBadLog, err)
	}
	end := l.MmapOffset + l.MmapSize
	if st.Size < 0 || end > uint64(st.Size) {
		return nil, fmt.Errorf("%w: offset %#x + size %#x past fd size %#x", ErrBadLog, l.MmapOffset, l.MmapSize, st.Size)
	}
	// The mapping runs to the word boundary after the log's last byte.
	// Those up to 3 bytes lie in the page holding that byte (a page
	// boundary is a word boundary), which the file backs at least in
	// part, so touching them cannot fault; an atomic OR leaves them as
	// they are.
	page := uint64(unix.Getpagesize())
	base := l.MmapOffset &^ (page - 1)
	length := (end+3)&^3 - base
	if length > uint64(maxInt) {
		return nil, fmt.Errorf("%w: size %#x", ErrBadLog, l.MmapSize)
	}
	mapping, err := unix.Mmap(fd, int64(base), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%w: mmap: %w", ErrBadLog, err)
	}
	return &dirtyLog{mapping: mapping, words: wordsOf(mapping[l.MmapOffset-base:]), size: l.MmapSize, log: lg, outside: outside}, nil
}

func (d *dirtyLog) unmap() error {
	if d == nil || d.mapping == nil {
		return nil
	}
	err := unix.Munmap(d.mapping)
	d.mapping, d.words = nil, nil
	return err
}

// LogWrite marks the pages of guest-physical [gpa, gpa+n) dirty: it
// implements virtq.DirtyLogger. Pages past the log's end are not marked.
func (d *dirtyLog) LogWrite(gpa, n uint64) {
	if n == 0 {
		return
	}
	first := gpa / vhostuser.LogPageSize
	last := first
	if end := gpa + n - 1; end >= gpa {
		last = end / vhostuser.LogPageSize
	} else {
		last = ^uint64(0) / vhostuser.LogPageSize // a range that wraps ends at the top
	}
	if limit := d.size * 8; last >= limit {
		d.noteOutside(gpa, n)
		if first >= limit {
			return
		}
		last = limit - 1
	}
	d.markPages(first, last)
}

// markPages sets the bits of pages first through last, all inside the log:
// one atomic OR per 32-bit word, so a 1 GiB buffer (256 Ki pages) costs 8 Ki
// of them.
func (d *dirtyLog) markPages(first, last uint64) {
	for w := first / 32; w <= last/32; w++ {
		lo, hi := max(first, w*32)-w*32, min(last, w*32+31)-w*32
		mask := uint32(1)<<hi<<1 - uint32(1)<<lo // bits lo..hi; hi=31 wraps to 0 as it should
		if !hostLittleEndian {
			// Page p is bit p%8 of byte p/8: bit lo of the little-endian
			// word, the bytes reversed in a big-endian one.
			mask = bits.ReverseBytes32(mask)
		}
		// Sequentially consistent read-modify-write: the writes to the
		// pages are visible before their bits are.
		atomic.OrUint32(&d.words[w], mask)
	}
}

// noteOutside counts a mark past the log's end and logs the first.
func (d *dirtyLog) noteOutside(gpa, n uint64) {
	if d.outside != nil {
		d.outside.Add(1)
	}
	if !d.warned.Swap(true) && d.log != nil {
		d.log.WithFields(logrus.Fields{"guest_address": fmt.Sprintf("%#x", gpa), "bytes": n,
			"log_covers": fmt.Sprintf("%#x", d.size*8*vhostuser.LogPageSize)}).
			Error("vhost: dirty log too small: a write past its end is not marked (logged once per log)")
	}
}
