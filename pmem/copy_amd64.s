//go:build linux

#include "textflag.h"

// func copyRepMovsb(dst, src []byte)
// Copies len(dst) bytes. Forward with REP MOVSB unless dst lies in
// (src, src+n), where only a backward copy (STD ... CLD) keeps the source
// bytes intact until they are read.
TEXT ·copyRepMovsb(SB), NOSPLIT, $0-48
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), CX
	MOVQ src_base+24(FP), SI
	MOVQ DI, AX
	SUBQ SI, AX
	JZ done            // same bytes: nothing to move
	CMPQ AX, CX
	JB backward        // 0 < dst-src < n (unsigned): dst overlaps src's tail
	REP; MOVSB
done:
	RET
backward:
	LEAQ -1(SI)(CX*1), SI
	LEAQ -1(DI)(CX*1), DI
	STD
	REP; MOVSB
	CLD
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
