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
//     preserves the two guest bytes after the used ring.
//   - descriptor tables and avail ring entries: written by the driver before
//     it publishes avail.idx (release), read by us after loading avail.idx
//     (acquire). They are copied into locals exactly once, so a guest that
//     rewrites them concurrently can only hurt itself, never make us act on
//     two different values.
//   - used ring elements: written by us before the used.idx store (release).
//
// Every value read from the guest is untrusted: it is bounded and checked,
// and a malformed chain or ring yields an error, never a panic or an
// unbounded loop.
package virtq
