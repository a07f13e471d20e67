package vhost

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newMemfd creates a size-byte memfd for the inflight region (GET_INFLIGHT_FD).
// The caller owns the fd.
//
// It is sealed against shrinking before anyone else sees it: the front-end
// gets the fd, and a front-end that truncated it would make our stores into
// the mapping fault (SIGBUS). F_SEAL_SEAL keeps it from adding seals of its
// own; growing stays allowed, it harms no mapping.
func newMemfd(size uint64) (int, error) {
	fd, err := unix.MemfdCreate("nvblk-inflight", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ftruncate: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sealing: %w", err)
	}
	return fd, nil
}

// u32At and u64At are the naturally aligned words at b[off:] of the shared
// inflight region, for sync/atomic. The region starts 8-aligned (checked
// when it is mapped) and every offset used is a multiple of the word size.
func u32At(b []byte, off int) *uint32 {
	_ = b[off+3]
	return (*uint32)(unsafe.Pointer(&b[off]))
}

func u64At(b []byte, off int) *uint64 {
	_ = b[off+7]
	return (*uint64)(unsafe.Pointer(&b[off]))
}

// aligned8 reports whether b starts at an 8-aligned host address.
func aligned8(b []byte) bool {
	return len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))&7 == 0
}
