package frontend

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
)

// DirtyLog is a dirty-page log as QEMU shares one with a back-end while it
// migrates a guest (vhost-user "Migration", SET_LOG_BASE): a memfd with one
// bit per 4 KiB page of guest-physical memory, page p at byte p/8, bit
// p%8, which the back-end sets (atomically) for every page it writes.
type DirtyLog struct {
	fd      int
	mapping []byte
	// Size is the log's bytes (SET_LOG_BASE's mmap_size); the memfd and
	// the mapping are rounded up to a page.
	Size uint64
}

// LogSize is the log that covers guest-physical addresses [0, end), in
// whole 64-bit chunks as QEMU sizes it (vhost_get_log_size).
func LogSize(end uint64) uint64 {
	const chunk = vhostuser.LogPageSize * 64 // guest bytes per 64-bit chunk
	if end == 0 {
		return 8
	}
	return ((end-1)/chunk + 1) * 8
}

// NewDirtyLog makes a zeroed log of size bytes.
func NewDirtyLog(size uint64) (*DirtyLog, error) {
	if size == 0 {
		return nil, fmt.Errorf("frontend: dirty log of 0 bytes")
	}
	page := uint64(unix.Getpagesize())
	fd, mapping, err := newMemfd((size + page - 1) / page * page)
	if err != nil {
		return nil, fmt.Errorf("frontend: dirty log: %w", err)
	}
	return &DirtyLog{fd: fd, mapping: mapping, Size: size}, nil
}

// FD is the log's memfd, owned by the DirtyLog.
func (l *DirtyLog) FD() int { return l.fd }

// Dirty reports whether the page holding guest-physical address gpa is
// marked.
func (l *DirtyLog) Dirty(gpa uint64) bool {
	p := gpa / vhostuser.LogPageSize
	if p/8 >= l.Size {
		return false
	}
	return load8(l.mapping, int(p/8))&(1<<(p%8)) != 0
}

// DirtyPages lists the marked pages by number (guest address / 4096).
func (l *DirtyLog) DirtyPages() []uint64 {
	var out []uint64
	for i := uint64(0); i < l.Size; i++ {
		b := load8(l.mapping, int(i))
		for bit := uint64(0); bit < 8; bit++ {
			if b&(1<<bit) != 0 {
				out = append(out, i*8+bit)
			}
		}
	}
	return out
}

// Clear unmarks every page, each word with an atomic swap, as QEMU reads
// and clears the log between migration passes.
func (l *DirtyLog) Clear() {
	for off := 0; off+4 <= len(l.mapping); off += 4 {
		swap32(l.mapping, off, 0)
	}
}

// Close unmaps the log and closes its memfd.
func (l *DirtyLog) Close() error {
	err := unmap(l.mapping)
	if cerr := unix.Close(l.fd); err == nil {
		err = cerr
	}
	l.mapping, l.fd = nil, -1
	return err
}

// SetLogBase sends SET_LOG_BASE describing desc, with l's fd attached (no fd
// when l is nil), and returns the u64 the back-end answered once LOG_SHMFD
// is negotiated (QEMU waits for that reply). QEMU does not look at its
// value, and libvhost-user sends back what the request held there (its
// mmap_size), so only a back-end known to answer 0 or 1 (nvblk: 1 is a
// refused log) tells anything by it. l stays the caller's.
func (d *Device) SetLogBase(l *DirtyLog, desc vhostuser.Log) (reply uint64, err error) {
	var fds []int
	if l != nil {
		fds = []int{l.fd}
	}
	b, err := d.Conn.Call(vhostuser.ReqSetLogBase, desc.Encode(), fds)
	if err != nil || d.Protocol&vhostuser.ProtoLogSHMFD == 0 {
		return 0, err
	}
	v, err := vhostuser.DecodeU64(b)
	if err != nil {
		return 0, fmt.Errorf("%w: SET_LOG_BASE: %v", ErrBadReply, err)
	}
	return v, nil
}

// StartLogging starts dirty logging as QEMU does when a migration starts
// (vhost_migration_log): SET_LOG_BASE with a new log covering guest memory,
// SET_FEATURES with VHOST_F_LOG_ALL, then SET_VRING_ADDR with
// VHOST_VRING_F_LOG and log_guest_addr (the used ring's guest address) for
// every queue. The log replaces d.Log, if any, and is d's.
func (d *Device) StartLogging() (*DirtyLog, error) {
	if d.Protocol&vhostuser.ProtoLogSHMFD == 0 {
		return nil, fmt.Errorf("frontend: PROTOCOL_F_LOG_SHMFD not negotiated (Options.DirtyLog)")
	}
	l, err := NewDirtyLog(LogSize(d.Mem.End()))
	if err != nil {
		return nil, err
	}
	// The reply's value says nothing QEMU would act on (see SetLogBase):
	// a back-end that refused the log refuses VHOST_F_LOG_ALL next.
	if _, err := d.SetLogBase(l, vhostuser.Log{MmapSize: l.Size}); err != nil {
		l.Close()
		return nil, err
	}
	if d.Log != nil {
		d.Log.Close() // the back-end let go of it for the new one
	}
	d.Log = l
	if err := d.SetLogging(true); err != nil {
		return nil, err
	}
	return l, nil
}

// StopLogging ends dirty logging as QEMU does when a migration ends or is
// cancelled: SET_FEATURES without VHOST_F_LOG_ALL, then SET_VRING_ADDR
// without VHOST_VRING_F_LOG. d.Log stays (QEMU sends no message to take
// a log back).
func (d *Device) StopLogging() error { return d.SetLogging(false) }

// SetLogging sends SET_FEATURES with VHOST_F_LOG_ALL set or clear, then
// SET_VRING_ADDR for every queue with VHOST_VRING_F_LOG to match: the
// part of StartLogging and StopLogging after the log, for a test that
// gives its own log (SetLogBase) or none.
func (d *Device) SetLogging(on bool) error {
	f := d.Features &^ vhostuser.FeatureLogAll
	if on {
		f |= vhostuser.FeatureLogAll
	}
	if err := d.Conn.SetU64(vhostuser.ReqSetFeatures, f); err != nil {
		return err
	}
	d.Features, d.logging = f, on
	for _, q := range d.Queues {
		if err := d.sendVringAddr(q, on); err != nil {
			return err
		}
	}
	return nil
}

// End is the guest-physical address past the highest region: what a
// dirty log must cover.
func (m *Memory) End() uint64 {
	var end uint64
	for _, r := range m.Regions {
		end = max(end, r.GuestAddr+r.Size)
	}
	return end
}
