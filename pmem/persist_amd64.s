//go:build linux

#include "textflag.h"

// Each write-back routine rounds the start of p down to its cache line and steps a line at a
// time up to the end of p, so a range that straddles lines writes back both.

// func writeBackCLWB(p []byte, line uintptr)
TEXT ·writeBackCLWB(SB), NOSPLIT, $0-32
	MOVQ p_base+0(FP), AX
	MOVQ p_len+8(FP), BX
	MOVQ line+24(FP), CX
	TESTQ BX, BX
	JZ clwb_done
	ADDQ AX, BX
	MOVQ CX, DX
	NEGQ DX
	ANDQ DX, AX
clwb_loop:
	CLWB (AX)
	ADDQ CX, AX
	CMPQ AX, BX
	JB clwb_loop
clwb_done:
	RET

// func writeBackCLFLUSHOPT(p []byte, line uintptr)
TEXT ·writeBackCLFLUSHOPT(SB), NOSPLIT, $0-32
	MOVQ p_base+0(FP), AX
	MOVQ p_len+8(FP), BX
	MOVQ line+24(FP), CX
	TESTQ BX, BX
	JZ clflushopt_done
	ADDQ AX, BX
	MOVQ CX, DX
	NEGQ DX
	ANDQ DX, AX
clflushopt_loop:
	CLFLUSHOPT (AX)
	ADDQ CX, AX
	CMPQ AX, BX
	JB clflushopt_loop
clflushopt_done:
	RET

// func writeBackCLFLUSH(p []byte, line uintptr)
TEXT ·writeBackCLFLUSH(SB), NOSPLIT, $0-32
	MOVQ p_base+0(FP), AX
	MOVQ p_len+8(FP), BX
	MOVQ line+24(FP), CX
	TESTQ BX, BX
	JZ clflush_done
	ADDQ AX, BX
	MOVQ CX, DX
	NEGQ DX
	ANDQ DX, AX
clflush_loop:
	CLFLUSH (AX)
	ADDQ CX, AX
	CMPQ AX, BX
	JB clflush_loop
clflush_done:
	RET

// func storeFence()
TEXT ·storeFence(SB), NOSPLIT, $0-0
	SFENCE
	RET

// func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL subleaf+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET
