// Package layering holds no code: its test reads the module's import graph
// and fails, naming the offending import, when a dependency points the wrong
// way. The layout it enforces, top to bottom:
//
//	cmd/nvblk                  the CLI: flags and wiring only
//	internal/blkserve          the one production wiring (serve and the tests)
//	internal/control           serve's control socket and metrics
//	vhostuser/conformance      checks any vhost-user-blk back-end
//	vhostuser/frontend         the Go driver that plays QEMU's part
//	vhost/blk                  the virtio-blk device, a vhost.Backend
//	vhost                      nvblk's back-end server, device-agnostic
//	vhostuser                  the vhost-user wire protocol both ends speak
//	virtq                      virtqueues over guest memory
//	btt                        the Linux-compatible BTT
//	pmem                       the byte-addressable medium
//	virtio                     the virtio spec's numbers, imported by any layer
package layering
