package main

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlRange issues a block-device ioctl whose argument is a {start,
// length} pair in bytes (BLKDISCARD, BLKZEROOUT); x/sys has no wrapper.
func ioctlRange(fd, req uintptr, r *[2]uint64) syscall.Errno {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(&r[0])))
	return e
}

// getcpu is the CPU the calling thread runs on; x/sys has no wrapper.
func getcpu() (uint32, bool) {
	var cpu uint32
	_, _, e := unix.RawSyscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cpu)), 0, 0)
	return cpu, e == 0
}
