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

// func copyNT(dst, src []byte) (moved bool)
// Copies len(dst) bytes forward, 64 at a time, with non-temporal stores
// (MOVNTDQ), and reports true; or reports false, having
// copied nothing, when dst is not 16-byte aligned, len(dst) is not a
// multiple of 64, or dst lies in (src, src+n), as copyRepMovsb does.
TEXT ·copyNT(SB), NOSPLIT, $0-49
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), CX
	MOVQ src_base+24(FP), SI
	TESTQ $15, DI
	JNZ nt_refuse
	TESTQ $63, CX
	JNZ nt_refuse
	MOVQ DI, AX
	SUBQ SI, AX
	JZ nt_done         // same bytes: nothing to move
	CMPQ AX, CX
	JB nt_refuse       // 0 < dst-src < n (unsigned): dst overlaps src's tail
	TESTQ CX, CX
	JZ nt_done
	ADDQ DI, CX
nt_loop:
	MOVOU 0(SI), X0
	MOVOU 16(SI), X1
	MOVOU 32(SI), X2
	MOVOU 48(SI), X3
	MOVNTO X0, 0(DI)
	MOVNTO X1, 16(DI)
	MOVNTO X2, 32(DI)
	MOVNTO X3, 48(DI)
	ADDQ $64, SI
	ADDQ $64, DI
	CMPQ DI, CX
	JB nt_loop
nt_done:
	MOVB $1, moved+48(FP)
	RET
nt_refuse:
	MOVB $0, moved+48(FP)
	RET
