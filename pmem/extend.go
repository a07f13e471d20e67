package pmem

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrCannotExtend wraps Extend on a medium that is not a writable regular file.
var ErrCannotExtend = errors.New("only a writable image file can be extended")

// Extend makes an image file newSize bytes long while it is in use, for a BTT that grows
// (btt.Device.Grow): the file is extended, its new space allocated (as Allocate does), and
// the whole file mapped again. Slices handed out before stay valid: the earlier mapping stays
// until Close, over the same pages. A devdax device or a block device is as large as it is.
// Extend and Close are not to be called at once.
func (m *Medium) Extend(newSize int64) error {
	if m.kind != KindFile || m.readOnly {
		return fmt.Errorf("pmem: %s: extend: %w (this is a %s%s)", m.path, ErrCannotExtend, m.kind, map[bool]string{true: ", read-only", false: ""}[m.readOnly])
	}
	old := m.Size()
	if newSize <= old {
		return fmt.Errorf("pmem: %s: extend to %d bytes: it has %d already: %w", m.path, newSize, old, ErrInvalidOptions)
	}
	if uint64(newSize) > uint64(^uint(0)>>1) {
		return fmt.Errorf("pmem: %s: extend to %d bytes: does not fit this process's address space: %w", m.path, newSize, ErrInvalidOptions)
	}
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed.Load() {
		return fmt.Errorf("pmem: %s: extend: %w", m.path, ErrClosed)
	}
	fd := m.claim.fd
	if err := unix.Ftruncate(fd, newSize); err != nil {
		return fmt.Errorf("pmem: %s: extend to %d bytes: %w", m.path, newSize, err)
	}
	if err := unix.Fallocate(fd, 0, old, newSize-old); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		// The file is longer but its new space has no blocks: give the
		// length back, so nothing maps a range a store would fault in.
		unix.Ftruncate(fd, old)
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("pmem: %s: allocating %d more bytes: %w: %w", m.path, newSize-old, ErrNoSpace, err)
		}
		return fmt.Errorf("pmem: %s: fallocate %d more bytes: %w", m.path, newSize-old, err)
	}
	data, mapSync, err := mapMedium(fd, newSize, false, true)
	if err != nil {
		unix.Ftruncate(fd, old)
		return fmt.Errorf("pmem: %s: mmap %d bytes: %w", m.path, newSize, err)
	}
	if mapSync != m.mapSync {
		// The durability mode was chosen for one kind of mapping.
		unmapMedium(data)
		unix.Ftruncate(fd, old)
		return fmt.Errorf("pmem: %s: extend: the new mapping's MAP_SYNC (%v) differs from the medium's (%v)", m.path, mapSync, m.mapSync)
	}
	m.extended = append(m.extended, *m.live.Load())
	m.live.Store(&data)
	return nil
}
