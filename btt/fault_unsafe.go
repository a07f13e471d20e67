package btt

import "unsafe"

// offsetIn reports whether addr, a fault address, lies inside b, and at
// which offset: a fault is attributed to the window of the mapping (data,
// map, flog) or the buffer it hit by comparing addresses, which only the
// cold path after a fault does.
func offsetIn(b []byte, addr uintptr) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	base := uintptr(unsafe.Pointer(&b[0]))
	if addr < base || addr-base >= uintptr(len(b)) {
		return 0, false
	}
	return int(addr - base), true
}
