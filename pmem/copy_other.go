//go:build linux && !amd64

package pmem

// useRepMovsb is false off amd64: Copy is the built-in copy there.
const useRepMovsb = false

func copyRepMovsb(dst, src []byte) { copy(dst, src) }

func prefetchLines(p []byte) {}
