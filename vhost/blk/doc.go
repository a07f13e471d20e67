// Package blk is the virtio-blk request layer (virtio 1.2 §5.2 "Block
// Device"): it offers the device features and configuration space, and
// turns descriptor chains popped from a virtq into reads, writes, flushes
// and zeroing on a Disk, zero-copy from guest memory.
package blk
