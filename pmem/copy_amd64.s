//go:build linux

#include "textflag.h"

// func copyRepMovsb(dst, src []byte) (moved bool)
// Copies len(dst) bytes forward with REP MOVSB and reports true, unless dst
// lies in (src, src+n): a forward copy would then read bytes it had
// already overwritten, and it reports false without copying. It never
// copies backwards: that needs the direction flag set (STD), and a fault
// part way (SetPanicOnFault turns it into a Go panic) would resume Go code
// with the flag still set, which the Go ABI forbids.
TEXT ·copyRepMovsb(SB), NOSPLIT, $0-49
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), CX
	MOVQ src_base+24(FP), SI
	MOVQ DI, AX
	SUBQ SI, AX
	JZ same            // same bytes: nothing to move
	CMPQ AX, CX
	JB overlap         // 0 < dst-src < n (unsigned): dst overlaps src's tail
	REP; MOVSB
same:
	MOVB $1, moved+48(FP)
	RET
overlap:
	MOVB $0, moved+48(FP)
	RET

// func prefetchLines(p []byte)
TEXT ·prefetchLines(SB), NOSPLIT, $0-24
	MOVQ p_base+0(FP), AX
	MOVQ p_len+8(FP), CX
	ADDQ AX, CX
prefetch_loop:
	PREFETCHT0 (AX)
	ADDQ $64, AX
	CMPQ AX, CX
	JB prefetch_loop
	RET
