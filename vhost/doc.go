// Package vhost is nvblk's vhost-user back-end server: it accepts
// front-ends (QEMU) on a unix socket, keeps what each hands over (guest
// memory, vring addresses, eventfds, the inflight region, the dirty log)
// and runs one worker goroutine per started queue. It implements the
// back-end's side of QEMU's docs/interop/vhost-user.rst: "Starting and
// stopping rings", "Memory region description", "Inflight I/O tracking",
// "Migration" (dirty logging, log.go) and the front-end message types; the
// wire format itself is package vhostuser.
//
// Sessions: each connection is a session (session.go) with its own memory
// table, rings, inflight region, dirty log and counters, served on its own
// goroutine, up to Options.MaxSessions at once (DefaultMaxSessions, 4); one
// more is accepted, logged and closed. A live migration needs two at once:
// the destination QEMU (-incoming) connects at start-up and waits for the
// handshake's replies while the source still runs the guest. Sessions share
// the Backend, whose handlers are per queue and per session (vhost/blk's
// each hold a BTT lane while there are enough). Server.Sessions lists
// them (SessionInfo), DetachSession drops one, Detach all; Stats sums
// their counters with those of the sessions that ended.
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
// Broken and hostile input (hostile_test.go, broken_test.go, fault_test.go,
// ringsetup_test.go): a message that violates the wire format (cut short,
// sizes that do not match, fds where none belong) drops the connection, and
// the next front-end is served; a well-formed request with bad contents
// (overlapping regions, a ring outside memory, a kick, call or error fd
// that is not an eventfd) is refused with a non-zero REPLY_ACK, its fd
// closed. SET_OWNER is not required before other requests: a connection is
// one front-end, and libvhost-user does not insist either; nor is memory
// before the rings: a ring kicked and enabled before any memory starts when
// the memory that holds it arrives. In the data path a malformed chain is
// completed (IOERR in its status byte when one was parsed, else nothing
// written) with a rate-limited warning, and the queue goes on; a corrupt
// ring stops only its queue and sets DEVICE_NEEDS_RESET.
//
// Shared memory the front-end takes away never kills the process
// (fault.go). A front-end can truncate the files behind guest memory and
// behind an inflight region it made itself (SET_INFLIGHT_FD) or a dirty log
// (SET_LOG_BASE), and touching the pages that went raises SIGBUS. A queue
// worker that faults there (in the rings, in a request's buffers, in the
// inflight records, in the log) stops that
// queue as for a corrupt ring: DEVICE_NEEDS_RESET, the error eventfd
// signalled, one log line; GET_VRING_BASE still answers and the handler is
// closed. A fault while handling a message (starting a ring reads its used
// index and recovers its inflight records) drops the connection. The other
// queues, and the next front-end, are served. The inflight memfd this
// server makes (GET_INFLIGHT_FD) is sealed against shrinking, so it cannot
// be taken away. A fault anywhere else is not the front-end's doing and is
// not caught. Running out of file descriptors does not stop Serve: failed
// accepts are retried with a growing pause and logged rate-limited.
//
// The operator is never held up by the guest: Server.Stats reads a view of
// the rings the session publishes after each message, and Detach closes
// the connection without waiting, so neither waits for a message whose
// handling waits for a stuck guest request (stopping a queue waits for the
// request it runs). The session tears down once that request completes.
//
// Locks: Server.mu guards the listeners, the sessions being served and the
// ended sessions' counters; a session's mu guards its memory table, vrings
// and dirty log and is held while one request is handled. They are never held together (the Server copies the
// session pointer out before calling into it), so there is no order to
// keep. A function whose name ends in Locked is called with session.mu
// held. A queue worker takes no lock on the data path: it alone uses its
// ring and handler, and stops (returning its ring index) before the session
// changes what it uses.
//
// Only inflight_unsafe.go, fault_unsafe.go and log_unsafe.go import
// unsafe: the inflight region's fields and the dirty log's words are shared
// with the front-end and touched through sync/atomic, a fault's address is
// compared with the mappings', and a segment's address is looked up in the
// memory table to log it by guest address.
package vhost
