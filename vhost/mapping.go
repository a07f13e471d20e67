package vhost

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// mapRegionFD maps [off, off+size) of fd MAP_SHARED, read-write, after
// checking the range fits the file. The mapping starts at the page below off
// (mmap offsets must be page aligned); the returned window starts at off.
func mapRegionFD(fd int, off, size uint64) (mapping, window []byte, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, nil, fmt.Errorf("fstat: %w", err)
	}
	end := off + size
	if end < off || st.Size < 0 || end > uint64(st.Size) {
		return nil, nil, fmt.Errorf("%w: offset %#x + size %#x past fd size %#x", ErrBadRegion, off, size, st.Size)
	}
	page := uint64(unix.Getpagesize())
	base := off &^ (page - 1)
	length := end - base
	if length > uint64(maxInt) {
		return nil, nil, fmt.Errorf("%w: size %#x", ErrBadRegion, size)
	}
	mapping, err = unix.Mmap(fd, int64(base), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap: %w", err)
	}
	return mapping, mapping[off-base:], nil
}

func unmapRegion(mapping []byte) error {
	if mapping == nil {
		return nil
	}
	return unix.Munmap(mapping)
}

const maxInt = int(^uint(0) >> 1)
