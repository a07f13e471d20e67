//go:build linux && !amd64

package pmem

// useRepMovsb is false off amd64: Copy is the built-in copy there.
const useRepMovsb = false

func copyRepMovsb(dst, src []byte) bool { copy(dst, src); return true }

func copyNT(dst, src []byte) bool { copy(dst, src); return true }

func prefetchLines(p []byte) {}

func storeFence() {}
