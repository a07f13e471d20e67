package vhost

import "unsafe"

// holds reports whether addr is the address of one of b's bytes.
func holds(b []byte, addr uintptr) bool {
	if len(b) == 0 {
		return false
	}
	return addr-uintptr(unsafe.Pointer(unsafe.SliceData(b))) < uintptr(len(b))
}
