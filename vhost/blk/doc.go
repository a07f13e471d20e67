// Package blk is the virtio-blk request layer (virtio 1.2 §5.2 "Block
// Device"): it offers the device features and configuration space, and
// turns descriptor chains popped from a virtq into reads, writes, flushes
// and zeroing on a Disk, zero-copy from guest memory.
//
// # Limits
//
// The work one request can make the disk do is bounded, because a queue
// (and behind it GET_VRING_BASE, memory-table changes and detach) waits for
// the request in flight. The bounds are the advertised limits, enforced: a
// request beyond one is answered VIRTIO_BLK_S_IOERR and nothing of it
// reaches the disk.
//
//   - At most seg_max data descriptors (Options.SegMax), whatever the driver
//     negotiated. A data descriptor is one holding a data byte; one that
//     virtq split where a guest memory region ends counts once.
//   - At most size_max data bytes per descriptor (Options.SizeMax), once the
//     driver negotiated VIRTIO_BLK_F_SIZE_MAX (Handler.SetDriverFeatures):
//     SIZE_MAX binds only a driver that accepted it, and OVMF, which does
//     not, reads a whole file through one descriptor.
//   - A write carries at most seg_max × size_max bytes, negotiated or not:
//     the largest write a driver honouring both builds. Linux does (it
//     sizes its requests from exactly these two fields; SIZE_MAX is always
//     offered for that reason, and never below the 64 KiB pages of arm64
//     and ppc64 kernels, which Linux would raise it to), and so writes are
//     where a medium that persists every sector spends its time.
//   - A read carries at most 1 GiB: OVMF's own limit, and a quarter of what
//     the used element's 32-bit length can report, so that length always
//     equals the bytes written (data plus status) and never wraps.
//   - DISCARD and WRITE_ZEROES cover at most max_discard_sectors and
//     max_write_zeroes_sectors in one segment. Their cost is per disk
//     sector, so the default is in disk sectors, 2048: under two seconds
//     even where every map update is persisted on its own (see
//     Options.MaxDiscardSectors).
package blk
