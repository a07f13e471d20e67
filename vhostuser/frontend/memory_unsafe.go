package frontend

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newMemfd creates and maps a size-byte memfd, MAP_SHARED so the back-end's
// mapping of the same fd sees our stores.
func newMemfd(size uint64) (fd int, mapping []byte, err error) {
	fd, err = unix.MemfdCreate("nvblk-frontend-guest", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("ftruncate: %w", err)
	}
	mapping, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("mmap: %w", err)
	}
	return fd, mapping, nil
}

func unmap(b []byte) error { return unix.Munmap(b) }

// hostAddr is the virtual address of b[0] in this process: the "user
// address" a front-end puts in memory regions and SET_VRING_ADDR.
func hostAddr(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

// The ring's index fields are 16 bits shared with the back-end; Go has 32-bit
// atomics only, so they are accessed through their aligned containing word.
// Stores compare-and-swap so the other half (which may belong to someone
// else) is preserved.

func word(b []byte, off int) (*uint32, int) {
	p := unsafe.Pointer(&b[off])
	shift := int(uintptr(p) & 3)
	return (*uint32)(unsafe.Add(p, -shift)), shift
}

func load16(b []byte, off int) uint16 {
	w, shift := word(b, off)
	return uint16(atomic.LoadUint32(w) >> (8 * shift))
}

func store16(b []byte, off int, v uint16) {
	w, shift := word(b, off)
	mask := uint32(0xffff) << (8 * shift)
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, old&^mask|uint32(v)<<(8*shift)) {
			return
		}
	}
}

// load8 loads the byte at b[off] atomically, through its aligned word: the
// dirty log is written by the back-end while we read it.
func load8(b []byte, off int) uint8 {
	w, shift := word(b, off)
	return uint8(atomic.LoadUint32(w) >> (8 * shift))
}

// swap32 stores v in the aligned word at b[off:off+4] with an atomic swap,
// returning what it held.
func swap32(b []byte, off int, v uint32) uint32 {
	return atomic.SwapUint32((*uint32)(unsafe.Pointer(&b[off])), v)
}
