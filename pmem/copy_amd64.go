//go:build linux

package pmem

import "golang.org/x/sys/cpu"

// useRepMovsb is fixed at start: CPUs without ERMS run REP MOVSB as a
// microcode byte loop, slower than the built-in copy.
var useRepMovsb = cpu.X86.HasERMS

// copyRepMovsb copies len(dst) bytes of src into dst (len(src) >=
// len(dst)) and reports true, or reports false, having copied nothing,
// when dst starts inside src: that case needs a backward copy, which it
// leaves to the built-in copy (see copy_amd64.s for why); implemented in
// copy_amd64.s.
//
//go:noescape
func copyRepMovsb(dst, src []byte) (moved bool)

// prefetchLines issues PREFETCHT0 for each cache line of p (non-empty);
// implemented in copy_amd64.s.
//
//go:noescape
func prefetchLines(p []byte)

// copyNT copies len(dst) bytes of src into dst with non-temporal stores,
// which only a later storeFence orders before other stores, and reports true, or reports false, having copied
// nothing, unless dst is 16-byte aligned, len(dst) a multiple of 64 and dst
// not inside src; implemented in copy_amd64.s.
//
//go:noescape
func copyNT(dst, src []byte) (moved bool)
