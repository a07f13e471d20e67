package crashmedium

import "unsafe"

// pagesEqual compares two equal-length windows. It is bytes.Equal without
// the race detector's bookkeeping: under -race, bytes.Equal records a read
// of every byte compared, and comparing a 16 MiB medium at every barrier
// and for every crash image then dominates the run. The medium only
// compares its own buffers while the engine is between stores (at a
// barrier, or between crash images), so no race can hide here.
func pagesEqual(a, b []byte) bool {
	return len(a) == len(b) &&
		unsafe.String(unsafe.SliceData(a), len(a)) == unsafe.String(unsafe.SliceData(b), len(b))
}

// wordsAsBytes views words as bytes: a buffer aligned as a mapping's is,
// for the engine's atomic 8-byte stores.
func wordsAsBytes(words []uint64) []byte {
	if len(words) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
}
