// Package vhost is nvblk's vhost-user back-end server: it accepts a
// front-end (QEMU) on a unix socket, keeps what the front-end hands over
// (guest memory, vring addresses, eventfds, the inflight region) and runs one
// worker goroutine per started queue. It implements the back-end's side of
// QEMU's docs/interop/vhost-user.rst: "Starting and stopping rings", "Memory
// region description", "Inflight I/O tracking" and the front-end message
// types; the wire format itself is package vhostuser.
//
// The server knows no device. A Backend supplies the virtio features, the
// config space and one Handler per queue (vhost/blk is nvblk's one device);
// a Handler turns a chain into an Outcome, which the worker completes and
// counts.
//
// Where it sits in the data path:
//
//	guest virtio-blk driver
//	  -> split ring in guest RAM (mapped from the region fds: memory.go)
//	  -> worker.go: kick eventfd -> virtq.Queue.Next -> worker.handle
//	  -> Handler.Handle (vhost/blk: parses the request, zero-copy iovecs
//	     into guest memory) -> the disk (a BTT) -> pmem
//	  -> virtq.Queue.Push/Publish -> call eventfd -> guest interrupt
//
// One request's path is worker.go alone: run takes chains (and first
// resubmits those a dead predecessor left in flight), one hands each to
// handle or, when virtq refused it, to badChain, publish completes them.
// session.go dispatches front-end messages; inflight.go keeps the inflight
// region; stats.go counts.
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
// keep. A function whose name ends in Locked is called with session.mu
// held. A queue worker takes no lock on the data path: it alone uses its
// ring and handler, and stops (returning its ring index) before the session
// changes what it uses.
//
// Only inflight_unsafe.go imports unsafe: the inflight region's fields are
// shared with the front-end and touched through sync/atomic.
package vhost
