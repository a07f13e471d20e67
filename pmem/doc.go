//go:build linux

// Package pmem is the byte-addressable medium that nvblk's BTT engine (package btt) lays its
// arena on: an emulated-NVDIMM file, a block device, or a devdax character device, mapped
// whole into the process with mmap(MAP_SHARED).
//
// Where it sits in the data path:
//
//	guest virtio-blk request -> vhost (virtq, vhost/blk) -> btt.Device.ReadV/WriteV
//	    -> pmem.Medium.Slice (copy in/out of the mapping) -> pmem.Medium.Persist (ordering point)
//
// The BTT never issues read(2)/write(2): it copies guest data straight into a window of the
// mapping returned by Slice and then calls Persist on that window before the next step of its
// write protocol (data block, then flog entry, then map entry) may become durable. How much
// Persist promises depends on the durability mode in force (see Durability and
// /work/shared/design/durability.md):
//
//	mode             Persist(off, n)                 Flush()               process crash / kill -9        host power loss
//	---------------  ------------------------------  --------------------  -----------------------------  ------------------------------------------------
//	DurabilityFlush  bounds check only, no syscall   msync(MS_SYNC) of     every retired store survives,  only what the last completed Flush covered; later
//	                 (stores already in page cache)  the whole mapping     in program order: atomic       stores may be lost or torn in any order
//	DurabilitySync   msync(MS_SYNC) of the page-     msync(MS_SYNC) of     every retired store survives:  every Persisted range is durable when Persist
//	                 aligned range                   the whole mapping     atomic                         returns, so step order holds: atomic (slow)
//	DurabilityDAX    CLWB / CLFLUSHOPT / CLFLUSH of  SFENCE                every retired store survives:  every Persisted range is durable when Persist
//	                 each cache line, then SFENCE                          atomic                         returns, at near memory speed: atomic
//
// DurabilityDAX needs a mapping with no page cache in between: a devdax device or a file on
// an fsdax filesystem that accepted MAP_SYNC. Open never falls back silently from it.
//
// A Medium claims its backing file exclusively, as the kernel claims a BTT's backing device
// with FMODE_EXCL: a second Open of the same file, from this process or another, fails with
// ErrBusy naming the holder. Read-only opens share the claim with other read-only opens.
package pmem
