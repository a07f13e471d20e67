//go:build linux

package pmem

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrNoSpace: the filesystem holding a regular-file medium has no room for the blocks the
// file still lacks. The error also wraps the errno (ENOSPC or EDQUOT).
var ErrNoSpace = errors.New("not enough free space to allocate the medium")

// Allocate makes the filesystem allocate every block of a regular-file medium that is still
// a hole (fallocate mode 0, which keeps the contents and the size), and from then on keeps
// them allocated: Zero writes zeroes instead of punching holes. A store into a hole of a
// MAP_SHARED mapping makes the filesystem allocate the page there and then, and when it
// cannot, because it is full, the store faults (SIGBUS) instead of failing like a write(2);
// an allocated medium has no such store left.
//
// Block devices and devdax have no holes: Allocate does nothing there, nor on a file whose
// filesystem cannot allocate ahead (EOPNOTSUPP, as on some network filesystems), which then
// stays as it is. When the space is not there it fails with an error naming the file, the
// bytes it lacks and the filesystem's free space, wrapping ErrNoSpace; the file's contents
// and size are unchanged, so it can still be used as it was.
func (m *Medium) Allocate() error {
	if err := m.checkRange("allocate", 0, 0); err != nil {
		return err
	}
	if m.kind != KindFile {
		return nil
	}
	if m.readOnly {
		return fmt.Errorf("pmem: %s: allocate: %w", m.path, ErrReadOnly)
	}
	fd := m.claim.fd
	// One lseek says whether there is any hole; counting them is for the
	// error only.
	if hole, err := unix.Seek(fd, 0, unix.SEEK_HOLE); err != nil {
		return fmt.Errorf("pmem: %s: lseek(SEEK_HOLE): %w", m.path, err)
	} else if hole >= m.Size() {
		m.keepAllocated.Store(true)
		return nil
	}
	err := unix.Fallocate(fd, 0, 0, m.Size())
	switch {
	case err == nil:
		m.keepAllocated.Store(true)
		return nil
	case errors.Is(err, unix.EOPNOTSUPP):
		return nil
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		missing, herr := holeBytes(fd, m.Size())
		var fs unix.Statfs_t
		serr := unix.Fstatfs(fd, &fs)
		if herr != nil || serr != nil {
			return fmt.Errorf("pmem: %s: allocating its %d bytes: %w: %w", m.path, m.Size(), ErrNoSpace, err)
		}
		free := int64(fs.Bavail) * fs.Bsize
		return fmt.Errorf("pmem: %s: %d bytes (%s) of the image's %s are holes to allocate, and the filesystem has %d bytes (%s) free: %w: %w",
			m.path, missing, humanBytes(missing), humanBytes(m.Size()), free, humanBytes(free), ErrNoSpace, err)
	}
	return fmt.Errorf("pmem: %s: fallocate %d bytes: %w", m.path, m.Size(), err)
}

// holeBytes counts the bytes of the file's first size bytes that are holes.
func holeBytes(fd int, size int64) (int64, error) {
	var holes int64
	for off := int64(0); off < size; {
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			return 0, err
		}
		if hole >= size {
			break
		}
		data, err := unix.Seek(fd, hole, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // no data after the hole
			data = size
		} else if err != nil {
			return 0, err
		}
		data = min(data, size)
		holes += data - hole
		off = data
	}
	return holes, nil
}

// humanBytes is n in the largest binary unit that keeps it at least 1.
func humanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// zeroAllocated is Zero on a medium that must stay allocated: FALLOC_FL_ZERO_RANGE turns the
// pages into zeroes without giving them back, where the filesystem has it; elsewhere the
// stores of clear do, on pages that are already there.
func (m *Medium) zeroAllocated(off, n int64) error {
	end := off + n
	page := int64(unix.Getpagesize())
	lo := (off + page - 1) &^ (page - 1)
	hi := end &^ (page - 1)
	if m.zeroRange.Load() && lo < hi {
		err := unix.Fallocate(m.claim.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, lo, hi-lo)
		switch {
		case err == nil:
			data := m.mapped()
			clear(data[off:lo])
			clear(data[hi:end])
			return nil
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL):
			m.zeroRange.Store(false)
		default:
			return fmt.Errorf("pmem: %s: zero [%d, +%d): fallocate(ZERO_RANGE): %w", m.path, off, n, err)
		}
	}
	clear(m.mapped()[off:end])
	return nil
}
