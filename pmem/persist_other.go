//go:build linux && !amd64

package pmem

// writeBackName says how DAX persistence is done on this architecture: without cache-line
// write-back instructions in this package, msync of the range, which on a DAX mapping makes
// the kernel write the CPU caches back (dax_writeback_mapping_range).
//
// On a devdax device, which has no fsync, that msync fails (EINVAL): real devdax use is
// supported on amd64 only until this architecture gets its own write-back routine.
const writeBackName = "msync"

func (m *Medium) writeBackCacheLines(off, n int64) error {
	return msyncRange(m.mapped(), off, n)
}

func (m *Medium) fenceWriteBacks() error {
	return msyncRange(m.mapped(), 0, m.Size())
}

func cacheLineStride() uintptr { return 0 }
