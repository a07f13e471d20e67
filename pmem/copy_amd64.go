//go:build linux

package pmem

import "golang.org/x/sys/cpu"

// useRepMovsb is fixed at start: CPUs without ERMS run REP MOVSB as a
// microcode byte loop, slower than the built-in copy.
var useRepMovsb = cpu.X86.HasERMS

// copyRepMovsb copies len(dst) bytes of src into dst (len(src) >=
// len(dst)). When dst starts inside src, a forward copy would read bytes it
// had already overwritten, so that case copies backwards; implemented in
// copy_amd64.s.
//
//go:noescape
func copyRepMovsb(dst, src []byte)

// prefetchLines issues PREFETCHT0 for each cache line of p (non-empty);
// implemented in copy_amd64.s.
//
//go:noescape
func prefetchLines(p []byte)
