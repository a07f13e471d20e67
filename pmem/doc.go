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
// Persist promises depends on the durability mode in force (see Durability, and
// docs/DURABILITY.md in the repository for why the BTT needs its steps ordered):
//
//	mode   Persist(off, n)                Flush()            kill -9 / backend crash   host power loss
//	-----  -----------------------------  -----------------  ------------------------  ---------------------------------------
//	Flush  bounds check only, no syscall  msync(MS_SYNC) of  atomic: every retired     only what the last completed Flush
//	       (stores are in the page cache  the whole mapping  store survives, in        covered; later stores may be lost or
//	       once they retire)                                 program order             torn, in any order
//	Sync   msync(MS_SYNC) of the          msync(MS_SYNC) of  atomic                    atomic: each Persisted range is durable
//	       page-aligned range             the whole mapping                            when Persist returns (a syscall and a
//	                                                                                   device write per step)
//	DAX    CLWB, else CLFLUSHOPT, else    SFENCE             atomic                    atomic: each Persisted range is durable
//	       CLFLUSH per cache line, then                                                when Persist returns, at near memory
//	       SFENCE                                                                      speed
//
// "Atomic" in the kill -9 column relies on x86 retiring stores in program order; the BTT
// still writes its flog and map words with sync/atomic so the Go compiler cannot reorder them.
//
// DurabilityDAX needs a mapping with no page cache in between: a devdax device or a file on
// an fsdax filesystem that accepted MAP_SYNC. Open never falls back silently from it.
//
// A mapping can fault where read(2) and write(2) would return an error: a store into a hole of
// a sparse file whose filesystem is full, any access past the end of a file another process
// truncated, a poisoned line of real persistent memory. Go turns such a fault into a crash
// unless the goroutine runs under runtime/debug.SetPanicOnFault; package btt does, and turns
// the fault into an I/O error. Copy is safe under it: it never copies backwards with REP MOVSB
// (which needs the direction flag set, and a fault part way would resume Go code with the flag
// still set), leaving overlapping copies to the built-in copy.
//
// What can be prevented is: Allocate gives a regular file every block it still lacks (fallocate,
// checked first with SEEK_HOLE), so that no store can meet a hole, or fails with one error,
// wrapping ErrNoSpace, that names the file, the bytes missing and the filesystem's free space,
// and leaves the file as it was. After Allocate, Zero keeps the blocks (FALLOC_FL_ZERO_RANGE or
// stores of zeroes) instead of punching holes. Block devices and devdax have no holes. nvblk
// format allocates the image, and serve allocates what a sparse image still lacks.
//
// A Medium claims its backing file exclusively, as the kernel claims a BTT's backing device
// with FMODE_EXCL: a second Open of the same file, from this process or another, fails with
// ErrBusy naming the holder. Read-only opens share the claim with other read-only opens.
package pmem
