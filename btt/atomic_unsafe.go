package btt

import (
	"sync/atomic"
	"unsafe"
)

// Map entries and flog halves live in the shared mapping and are read by
// other goroutines (readers) and, after a crash, by recovery. They are stored
// with single atomic instructions so that a reader or a crash sees either the
// old or the new word, never a torn one, and so that the Go compiler keeps
// them in program order relative to the data stores before them. The encoding
// is little-endian on media; nvblk builds only for little-endian CPUs (see
// endian_check.go), so a native-order atomic is the on-media encoding.

// loadWord32 atomically loads the 4-byte-aligned word at b[off:].
func loadWord32(b []byte, off int) uint32 {
	w := b[off : off+4 : off+4] // bounds check without a load the race detector would see
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&w[0])))
}

// storeWord32 atomically stores the 4-byte-aligned word at b[off:].
func storeWord32(b []byte, off int, v uint32) {
	w := b[off : off+4 : off+4]
	raceTouch(w, 0)
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&w[0])), v)
}

// storeWord64 atomically stores the 8-byte-aligned word at b[off:].
func storeWord64(b []byte, off int, v uint64) {
	w := b[off : off+8 : off+8]
	raceTouch(w, 0)
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&w[0])), v)
}

// aligned reports whether b's first byte sits at an address aligned to n.
func aligned(b []byte, n uintptr) bool {
	return len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))%n == 0
}

// loadWord64 atomically loads the 8-byte-aligned word at b[off:].
func loadWord64(b []byte, off int) uint64 {
	w := b[off : off+8 : off+8]
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&w[0])))
}
