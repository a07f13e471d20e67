// Package btt is a Block Translation Table engine, byte-compatible with the
// Linux kernel's drivers/nvdimm/btt.c and the UEFI 2.7 BTT layout.
//
// A BTT turns a byte-addressable medium (package pmem) into a block device
// whose sector writes are atomic across crashes: a write goes to a free block,
// then a flog ("free list + log") entry records the move, then the map entry
// for the sector is switched to the new block. Recovery on Open finishes any
// move the flog recorded but the map missed. In nvblk's data path it sits
// between the virtio-blk request layer (vhost/blk), which hands it io-vectors
// of guest memory, and the medium, whose mapping it copies to and from.
//
// Concurrency follows the kernel. A lane owns one free block per arena and one
// flog group; a goroutine holds a lane for the length of one I/O. Readers
// publish the block they are about to read in the read tracking table (RTT)
// and re-check the map; a writer waits until no reader has its free block
// published before writing it. Map updates take one of nfree map locks,
// chosen by the cache line holding the premap entry, so writers on different
// lanes share a lock only when they touch the same map cache line.
//
// Lock order: lane (held for the whole I/O) -> map lock. No other locks are
// taken on the I/O path.
//
// Durability is the medium's: the engine calls Medium.Persist after the data
// block, after each flog half and after the map entry, in that order, and
// Medium.Flush on Device.Flush. See docs/DURABILITY.md in the repository and
// package pmem for what each durability mode promises, and why the order
// matters to recovery.
package btt
