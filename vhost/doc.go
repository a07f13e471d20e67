// Package vhost is nvblk's vhost-user back-end: the control plane that lets
// QEMU (the vhost-user "front-end") hand a virtio device's queues and guest
// memory to this process.
//
// The protocol is specified by QEMU's docs/interop/vhost-user.rst. QEMU
// connects to our unix socket and sends requests (header + payload, file
// descriptors in SCM_RIGHTS ancillary data): it negotiates features, shares
// guest RAM as memfd/hugetlbfs file descriptors (SET_MEM_TABLE, ADD_MEM_REG),
// describes each split virtqueue (SET_VRING_NUM/ADDR/BASE) and gives us an
// eventfd to be kicked on (SET_VRING_KICK) and one to signal completions on
// (SET_VRING_CALL).
//
// Where it sits in the data path:
//
//	guest virtio-blk driver
//	  -> split ring in guest RAM (shared with us by mmap of the region fds)
//	  -> per-queue worker (this package): kick eventfd -> virtq.Queue.Next
//	  -> vhost/blk Handler (parses the virtio-blk request, zero-copy iovecs
//	     straight into guest memory) -> btt.Device -> pmem
//	  -> virtq.Queue.Push/Publish -> call eventfd -> guest interrupt
//
// The package is device-agnostic: a Backend supplies virtio features, config
// space and per-queue handlers; the Server owns the socket, the guest memory
// table, the vring state and the workers.
//
// Broken and hostile input (hostile_test.go, broken_test.go): a message
// that violates the wire format (cut short, sizes that do not match, fds
// where none belong) drops the connection, and the next front-end is
// served; a well-formed request with bad contents (overlapping regions, a
// ring outside memory) is refused with a non-zero REPLY_ACK. SET_OWNER is
// not required before other requests: a connection is one front-end, and
// libvhost-user does not insist either. In the data path a malformed chain
// is completed (IOERR in its status byte when one was parsed, else nothing
// written) with a rate-limited warning, and the queue goes on; a corrupt
// ring stops only its queue and sets DEVICE_NEEDS_RESET.
//
// Locks: Server.mu guards the listeners and the current session; a
// session's mu guards its memory table and vrings and is held while one
// request is handled. They are never held together (the Server copies the
// session pointer out before calling into it), so there is no order to
// keep. A queue worker takes no lock on the data path: it alone uses its
// ring and handler, and stops (returning its ring index) before the session
// changes what it uses.
//
// wire.go holds the whole wire format. Guest memory mapping (mmap) lives only
// in *_unsafe.go files.
package vhost
