// Package virtq is the device side of a virtio split virtqueue (virtio 1.2
// §2.7 "Split Virtqueues") living in guest memory shared over vhost-user.
//
// Ownership of the shared fields, and how they are touched:
//
//   - avail.flags, avail.idx, avail.used_event: written by the driver, loaded
//     by us with sync/atomic on the aligned 32-bit word containing them.
//   - used.flags, used.idx: written by us only; stored together as one
//     32-bit atomic word (both halves are ours, so nothing is clobbered).
//   - used.avail_event: written by us; it has no device-owned neighbour in
//     its aligned word, so it is updated with a compare-and-swap that
//     preserves the two guest bytes after the used ring. A guest that keeps
//     rewriting those bytes makes the swap fail; after a bounded number of
//     failures the field gets a plain 16-bit store (which leaves them
//     untouched too) and a full barrier. So arming a kick always succeeds
//     in bounded steps: EnableKicks never reports work that is not there,
//     and a worker cannot be made to poll instead of sleeping on its kick.
//   - descriptor tables and avail ring entries: written by the driver before
//     it publishes avail.idx (release), read by us after loading avail.idx
//     (acquire). They are copied into locals exactly once, so a guest that
//     rewrites them concurrently can only hurt itself, never make us act on
//     two different values.
//   - used ring elements: written by us before the used.idx store (release).
//   - with a DirtyLogger (Config.UsedLog: vhost-user live migration), every
//     store to the used ring is reported right after it is made, at its
//     offset from Config.UsedLogAddr: an element before the used.idx store
//     that publishes it, used.idx after its own store.
//
// Guest memory may come in several regions. A ring area (descriptor table,
// avail ring, used ring) is accessed in place and must lie inside one
// region, or the queue is refused with ErrConfig. A descriptor's buffer may
// run from one region into the next, adjacent one (hot-plugged DIMMs are
// contiguous in guest-physical space but separate mappings here): it
// becomes one Segment per region, the later ones marked Continues, as
// libvhost-user splits it into iovecs. An indirect table straddling
// adjacent regions is copied. A chain has at most two segments per entry of
// its table; past that, or where a buffer runs into unmapped space, it is
// ErrBadChain.
//
// Every value read from the guest is untrusted: it is bounded and checked,
// and a malformed chain or ring yields an error, never a panic or an
// unbounded loop.
package virtq
