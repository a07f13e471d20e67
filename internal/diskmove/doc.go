// Package diskmove moves a served disk to another host while its guest
// runs, in the same window as QEMU's live migration of the guest: a disk
// on local persistent memory has to travel with the guest, where a shared
// disk does not.
//
// It sits beside the virtio-blk device, between its queues and the disk
// (blkserve wires a Tracker's Wrap in front of every queue's disk):
//
//	source host                               destination host
//	guest -> vhost queues -> Tracker -> BTT    NBD export -> BTT
//	                           |                    ^        ^
//	                           +-- Push (NBD) ------+        |
//	                                            Tracker (holds the
//	                                            destination guest's
//	                                            requests until Arrived)
//
// The copy is the classic pre-copy of block migration (QEMU's old
// block-migration, drive-mirror): the whole disk first, then the sectors
// written since, round after round until few are left; then, once the
// guest's front-end stops the rings for the switch-over (Options.Cutover:
// vhost's GET_VRING_BASE on every ring while the dirty log is on), the
// source fences its disk so that nothing can write it again, sends the last
// dirty sectors, flushes and disconnects. The destination's export takes
// that clean disconnect after a flush as the disk's arrival and lets its
// guest's requests through; until then they wait, which is the downtime the
// disk adds to the migration's.
//
// Writes are marked in a bitmap of sectors with atomic OR after the disk
// took them, and the copier clears a word's bits (atomic swap) before it
// reads the sectors, so a write the copier misses is always marked again:
// the destination ends equal to the source's state at the fence.
//
// The transport is NBD (package nbd): the standard protocol for this, so
// that qemu-nbd and qemu-img can be either end, and the destination's
// export is an ordinary NBD export while it waits.
package diskmove
