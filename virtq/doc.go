// Package virtq is the device side of a virtio virtqueue living in guest
// memory shared over vhost-user: the split virtqueue (virtio 1.2 §2.7
// "Split Virtqueues") and, with Config.Packed, the packed one (§2.8
// "Packed Virtqueues", VIRTIO_F_RING_PACKED). One Queue type runs either,
// behind the same methods, so a worker does not care which it has.
//
// Ownership of the shared fields of a split ring, and how they are touched:
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
// A packed ring (packed.go; its layout in packed_layout.go) has one
// descriptor ring that both sides write, and two event suppression areas:
//
//   - an available descriptor: the driver writes addr, len and id, then
//     its flags (release; a chain's head last, §2.8.6). We load each
//     id|flags word atomically (acquire) and copy addr and len once, so
//     the chain is parsed from our copy (Queue.Taken) and a driver that
//     rewrites the ring under us cannot make us act on two values.
//   - a used descriptor: we write len, then id|flags as one atomic store
//     (release). The first of a batch is held back until Publish, so the
//     driver, which reads used descriptors in ring order, sees the batch
//     whole (§2.8.2). A chain is skipped whole: the next used descriptor
//     goes as many descriptors on as the chain had (§2.8.6), which is why
//     the queue remembers each buffer ID's chain length while it is in
//     flight.
//   - the driver area (driver's event suppression): loaded atomically at
//     Publish. The device area (ours): stored atomically by DisableKicks,
//     EnableKicks and, with EVENT_IDX while kicks are on, by Next.
//   - positions carry their wrap counter: LastAvail and UsedIdx report
//     index | wrap<<15, as vhost-user's VRING_BASE halves do.
//   - with a DirtyLogger, each used descriptor is logged (bytes 8-15: len,
//     id, flags) at its offset from Config.DescAddr after its flags store,
//     and the device area at Config.UsedLogAddr after each store.
//
// A packed chain whose extent cannot be known (it does not end within the
// ring size, a descriptor in it is not available), a buffer ID past the
// ring or still in flight, or more descriptors in flight than the ring
// holds, is ErrBroken: the ring has no known next chain. A chain whose
// buffers or indirect table are bad is ErrBadChain, completed like a split
// ring's.
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
