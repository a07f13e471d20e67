// Package virtio holds the numbers of the virtio 1.2 specification that
// more than one package needs: the reserved feature bits of §6, the device
// status bits of §2.1 and the virtio-blk device of §5.2 (feature bits,
// request types, status bytes and the configuration layout).
//
// It sits under everything that speaks virtio: the virtqueue code (virtq),
// nvblk's virtio-blk device (vhost/blk), the server's status handling
// (vhost) and the Go front-end that plays the driver in tests and
// benchmarks (vhostuser/frontend). Each number is defined here once; the
// package has no code and imports nothing, so any package may use it.
package virtio
