//go:build linux

package pmem

// cacheLine is the stride of the write-back loop. CPUID leaf 1 reports the CLFLUSH line size;
// every x86-64 part so far says 64, and a smaller stride would only cost time.
var cacheLine = uintptr(64)

// writeBack is the cache-line write-back chosen once for this CPU: CLWB keeps the line
// cached, CLFLUSHOPT evicts it but is weakly ordered, CLFLUSH evicts and serializes.
var writeBack, writeBackName = chooseWriteBack()

func chooseWriteBack() (func(p []byte, line uintptr), string) {
	maxLeaf, _, _, _ := cpuid(0, 0)
	_, ebx1, _, _ := cpuid(1, 0)
	if size := uintptr((ebx1>>8)&0xff) * 8; size >= 32 && size&(size-1) == 0 {
		cacheLine = size
	}
	if maxLeaf >= 7 {
		_, ebx7, _, _ := cpuid(7, 0)
		if ebx7&(1<<24) != 0 {
			return writeBackCLWB, "clwb"
		}
		if ebx7&(1<<23) != 0 {
			return writeBackCLFLUSHOPT, "clflushopt"
		}
	}
	return writeBackCLFLUSH, "clflush"
}

// writeBackCacheLines makes [off, off+n) durable on a DAX mapping: the write-backs, then a
// fence so the next store the caller makes cannot become durable before them.
func (m *Medium) writeBackCacheLines(off, n int64) error {
	writeBack(m.mapped()[off:off+n], cacheLine)
	storeFence()
	return nil
}

func (m *Medium) fenceWriteBacks() error {
	storeFence()
	return nil
}

// Implemented in persist_amd64.s. Each writes back every cache line that p overlaps.
func writeBackCLWB(p []byte, line uintptr)
func writeBackCLFLUSHOPT(p []byte, line uintptr)
func writeBackCLFLUSH(p []byte, line uintptr)
func storeFence()
func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)

func cacheLineStride() uintptr { return cacheLine }
