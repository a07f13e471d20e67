//go:build linux

package pmem

// Copy copies min(len(dst), len(src)) bytes from src to dst and returns
// how many, like the built-in copy, which it is for copies under 2 KiB, on
// CPUs without ERMS and for overlapping ranges that need a backward copy. It is how the BTT moves sector data between guest memory and the
// mapping: for block-sized copies on a CPU with fast REP MOVSB (ERMS), it
// uses REP MOVSB, which on such parts streams the destination without
// reading it first. Measured on an AMD EPYC (ERMS+FSRM), 4 KiB blocks
// between a 1 GiB mapping and a 128 KiB buffer: scattered writes into the
// mapping 1.7x, sequential reads out of it 1.5x, scattered reads 1.1x the
// built-in copy (Go's AVX loop). BenchmarkCopy4KiB shows it on the machine
// at hand.
func Copy(dst, src []byte) int {
	n := min(len(dst), len(src))
	if n < repMovsbMin || !useRepMovsb || !copyRepMovsb(dst[:n], src[:n]) {
		return copy(dst, src)
	}
	return n
}

// CopyStreaming is Copy for data written into the medium that nothing
// will read again soon: a sector a guest writes. Block-sized copies to a
// 16-byte aligned destination go out with non-temporal stores, which
// neither read the destination's cache lines first nor evict the cache
// for them (the kernel's memcpy_flushcache does the same for pmem), and
// end with an SFENCE, so they are ordered before the stores that follow,
// such as the map entry that publishes the sector. Anything else is Copy.
// Scattered 4 KiB blocks into a 1 GiB mapping on tmpfs: 1.26-1.31x REP
// MOVSB (3 runs, 2-vCPU Xeon); BenchmarkCopy4KiB's streaming rows.
func CopyStreaming(dst, src []byte) int {
	n := CopyStreamingUnordered(dst, src)
	storeFence()
	return n
}

// CopyStreamingUnordered is CopyStreaming without its closing SFENCE: its
// non-temporal stores are ordered before later stores only once
// OrderStreaming has run. A writer of several sectors copies them all
// this way and orders them once: the fence waits for the copy's stores to
// drain to memory, and one wait per request overlaps with the copies that
// a wait per sector would stall (BenchmarkCopyStreamingBatch).
func CopyStreamingUnordered(dst, src []byte) int {
	n := min(len(dst), len(src))
	if n < repMovsbMin || !copyNT(dst[:n], src[:n]) {
		return Copy(dst, src)
	}
	return n
}

// OrderStreaming orders the stores of every CopyStreamingUnordered before
// it before every store after it (SFENCE; plain stores need no fence on
// amd64, where they are never reordered with each other).
func OrderStreaming() { storeFence() }

// repMovsbMin is where REP MOVSB starts to pay: it has a fixed start-up
// cost (~15 ns on the machine above, where the built-in copy moves 512
// bytes in 6 ns), which a 2 KiB copy already amortises.
const repMovsbMin = 2048

// Prefetch asks the CPU to start loading the cache lines of b, so that a
// copy out of b issued a little later finds them on the way. It is a hint:
// it never faults, never blocks, and says nothing about order. The BTT
// calls it for the next sector's block while it copies the current one:
// scattered blocks otherwise cost one full memory latency each before
// the hardware prefetcher catches on (measured with 32 scattered 4 KiB
// blocks of a 1 GiB mapping: 10.8 us per 128 KiB without, 7.9 us when
// the next block's first 512 bytes are prefetched).
func Prefetch(b []byte) {
	if len(b) > 0 {
		prefetchLines(b)
	}
}
