package virtq

import (
	"encoding/binary"
	"unsafe"
)

// word16 locates the naturally aligned 32-bit word of b that contains the
// 16-bit field b[off:off+2], so the field can be loaded atomically (Go has no
// 16-bit atomics). shift is the byte offset of the field inside the word.
// ok is false when the host address is not 2-aligned or the word is not
// entirely inside b; shift is still set in the latter case.
func word16(b []byte, off int) (w *uint32, shift int, ok bool) {
	if off < 0 || off+2 > len(b) {
		return nil, 0, false
	}
	p := uintptr(unsafe.Pointer(&b[off]))
	if p&1 != 0 {
		return nil, 0, false
	}
	shift = int(p & 3)
	start := off - shift
	if start < 0 || start+4 > len(b) {
		return nil, shift, false
	}
	return (*uint32)(unsafe.Pointer(&b[start])), shift, true
}

// word32 returns the 32-bit word at b[off:off+4]; ok is false unless its
// host address is 4-aligned.
func word32(b []byte, off int) (w *uint32, ok bool) {
	if off < 0 || off+4 > len(b) {
		return nil, false
	}
	p := unsafe.Pointer(&b[off])
	if uintptr(p)&3 != 0 {
		return nil, false
	}
	return (*uint32)(p), true
}

// storeLow16 stores v as the little-endian 16-bit field in the first two
// bytes of *w, with one halfword store that leaves the word's other two
// bytes untouched. It is not an atomic operation, and need not be: the
// field is ours alone and the bytes beside it are the guest's, written
// concurrently. go:norace, because a test standing in for the guest
// writes those bytes with atomics on the whole word, which the race
// detector would otherwise report against this store.
//
//go:norace
func storeLow16(w *uint32, v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	*(*uint16)(unsafe.Pointer(w)) = binary.NativeEndian.Uint16(b[:])
}

// ringWords views b, a ring area whose host address is 4-aligned, as
// 32-bit words for sync/atomic; ok is false when it is not 4-aligned or
// not a whole number of words.
func ringWords(b []byte) (w []uint32, ok bool) {
	if len(b) == 0 || len(b)%4 != 0 || uintptr(unsafe.Pointer(&b[0]))&3 != 0 {
		return nil, false
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(&b[0])), len(b)/4), true
}
