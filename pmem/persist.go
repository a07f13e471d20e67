//go:build linux

package pmem

// WriteBackInstruction names how Persist writes the CPU caches back to the medium, for logs
// that must say exactly what durability rests on: in DurabilityDAX the cache-line write-back
// chosen for this CPU ("clwb", "clflushopt" or "clflush"; "msync" on an architecture without
// one in this package), and "" in the page-cache modes, where Persist writes no cache line
// back and msync does the work.
func (m *Medium) WriteBackInstruction() string {
	if m.durability != DurabilityDAX {
		return ""
	}
	return writeBackName
}
