// Package btt is a Block Translation Table engine, byte-compatible with the
// Linux kernel's drivers/nvdimm/btt.c and the UEFI 2.7 BTT layout.
//
// A BTT turns a byte-addressable medium (package pmem) into a block device
// whose sector writes are atomic across crashes: a write goes to a free block,
// then a flog ("free list + log") entry records the move, then the map entry
// for the sector is switched to the new block. Recovery on Open finishes any
// move the flog recorded but the map missed. Before it writes anything, a
// read-write Open also checks that every block has one owner (a lane's free
// list or one LBA's map entry) as recovery will leave the arena, and
// refuses an image where one does not with ErrCorrupt: served, such an
// image turns writes into in-place overwrites of live sectors. Read-only
// opens skip that check; Check reports every such conflict. In nvblk's data path it sits
// between the virtio-blk request layer (vhost/blk), which hands it io-vectors
// of guest memory, and the medium, whose mapping it copies to and from.
//
// Concurrency follows the kernel. A lane owns one free block per arena and one
// flog group; a goroutine holds a lane for the length of one I/O. Readers
// publish the block they are about to read in the read tracking table (RTT)
// and re-check the map; a writer waits until no reader has its free block
// published before writing it. Unlike the kernel, a reader publishes a
// range: a run of sectors whose blocks are consecutive is published,
// re-checked and copied as one. Map updates take one of nfree map locks,
// chosen by the cache line holding the premap entry, so writers on different
// lanes share a lock only when they touch the same map cache line.
//
// Lock order: lane (held for the whole I/O) -> map lock. No other locks are
// taken on the I/O path. ReadV, WriteV and WriteZeroes take a lane from the
// pool per call; a Lane (AcquireLane, TryAcquireLane) is one held across
// many, as a vhost queue holds one. AcquireLane waits for a lane;
// TryAcquireLane never waits and never hands out the last lane no Lane
// holds, so per-call I/O always finds one: a device of n lanes serves n-1
// held Lanes, and callers that got none fall back to per-call I/O. Close
// waits for every lane, per-call or held, WriteZeroes included. A Lane may
// also hold a second lane for a read helper (AddReadHelper), a goroutine
// that claims chunks of the Lane's reads of 64 KiB or more alongside its
// caller, each chunk read on its own lane as any read is (readsplit.go).
//
// On a deferred medium a write takes clean blocks for up to 16 sectors at
// once, copies the sectors into them, orders them with one store fence and
// then publishes each under its map lock; it holds the commit gate shared
// for one such batch at a time, so a commit waits for a batch, not for a
// whole large request.
//
// Faults never end the process. The medium is a shared mapping, where a
// truncated image, a full filesystem under a sparse image, or poisoned
// memory shows as SIGBUS on a load or store, and io-vectors are guest
// memory a front-end may shrink. Every entry point that touches either runs
// with runtime/debug.SetPanicOnFault and turns the fault into an error
// wrapping ErrMediaFault (the mapping) or ErrBufferFault (the io-vector);
// the BTT stays consistent:
//
//   - a fault in a write's data copy comes before its flog and map stores,
//     so the write is abandoned with nothing changed but a free block; the
//     map entry is stored back unchanged before the flog entry, so a map
//     page that cannot be allocated faults then too;
//   - a fault in a read's copy out of a block sets the sector's error flag
//     (as the kernel does on a media error): it reads as ErrMediaError
//     until a write or write-zeroes replaces it; a fault in the caller's
//     buffer sets nothing;
//   - a failure between a write's first flog store and its map store, when
//     the in-memory free list may name a live block, fails the arena: its
//     writes get ErrArenaFailed until the device is reopened, and reopening
//     recovers the write from the flog; reads go on;
//   - every lane, lock and read tracking slot the I/O held is released.
//
// What Open allocates is bounded by the medium's size, not by its info
// blocks: arenas smaller than ArenaMinSize are refused, at most
// DefaultNFree lanes of each arena are kept in memory whatever its nfree,
// and one map lock table serves every arena (a few KiB per arena of at
// least 16 MiB). Flog groups past the lanes in use are still checked and
// recovered, without being kept.
//
// Durability is the medium's: the engine calls Medium.Persist after the data
// block, after each flog half and after the map entry, in that order, once
// per arena over the map entries a WriteZeroes stored, and Medium.Flush on
// Device.Flush. On a medium whose Persist waits for Flush (DeferredMedium:
// the page cache, written back in any order) a writable device instead
// writes into blocks nothing on the medium names, keeps the new mappings in
// a pending table that readers consult first (kept in a ProcessLogMedium's
// region, so a killed process's writes are replayed), and commits them on
// Flush, on Close and when every free block is taken: Flush, flog entries,
// Flush, map entries (deferred.go). Lock order there: lane -> the device's
// commit gate -> map lock -> the arena's pending-table lock. See docs/DURABILITY.md in the repository and
// package pmem for what each durability mode promises, and why the order
// matters to recovery.
package btt
