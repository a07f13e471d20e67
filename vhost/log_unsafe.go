package vhost

import "unsafe"

// wordsOf views b, which starts 4-byte aligned and is a whole number of
// words long (the log's mapping), as 32-bit words for sync/atomic.
func wordsOf(b []byte) []uint32 {
	if len(b) < 4 {
		return nil
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

// hostAddr is the address of b's first byte, which the caller knows
// exists: a segment's buffer, looked up in the memory table (hostToGuest).
func hostAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
