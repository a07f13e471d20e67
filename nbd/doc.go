// Package nbd is a server and a client of the Network Block Device
// protocol, as NetworkBlockDevice/nbd doc/proto.md specifies it: the
// protocol qemu-nbd, qemu-img, qemu's block layer and the kernel's
// nbd-client speak. In nvblk it is how a disk leaves its host: `nvblk
// serve` exports a BTT over it, and during a live migration the source
// pushes its disk's sectors with a Client into the destination's export
// (issue 14). Neither is wired here; cmd/nvblk and internal/blkserve do.
//
// What it implements, by section of proto.md:
//
//   - "Fixed newstyle negotiation" only (no oldstyle): the server offers
//     NBD_FLAG_FIXED_NEWSTYLE and NBD_FLAG_NO_ZEROES ("Handshake flags");
//     a client without NBD_FLAG_C_FIXED_NEWSTYLE is served too, since all
//     it can send is NBD_OPT_EXPORT_NAME; unknown client flags hang up.
//   - "Option types": NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT, NBD_OPT_LIST,
//     NBD_OPT_INFO and NBD_OPT_GO, answered with NBD_INFO_EXPORT and
//     NBD_INFO_BLOCK_SIZE (the export's sector size as minimum and
//     preferred block size, 32 MiB as maximum payload) whether or not
//     the client asked for it. Every other option (NBD_OPT_STARTTLS,
//     NBD_OPT_STRUCTURED_REPLY, the metadata contexts, anything unknown)
//     gets NBD_REP_ERR_UNSUP.
//   - "Transmission" with simple replies: NBD_CMD_READ, WRITE, DISC,
//     FLUSH, TRIM and WRITE_ZEROES ("Request types"), with transmission
//     flags HAS_FLAGS, SEND_FLUSH, SEND_FUA, CAN_MULTI_CONN, and SEND_TRIM
//     and SEND_WRITE_ZEROES when writable, READ_ONLY when not. FUA is a
//     Flush after the write; CAN_MULTI_CONN holds because every
//     connection shares the Export and its Flush, and the server caches
//     nothing. Errors are the values of "Error values": EPERM for writes
//     to a read-only export, ENOSPC for writes past its end (and for an
//     Export's ENOSPC, EDQUOT, EFBIG), EINVAL for reads past its end, bad
//     flags, unknown commands and misalignment, EIO for any other failure.
//   - "Size constraints": requests must be aligned to the sector size.
//     Unaligned reads, writes and write-zeroes are refused with EINVAL,
//     not served by a read-modify-write (two overlapping requests in
//     flight would race on the shared sector); an unaligned trim, a hint,
//     is narrowed to the whole sectors it covers.
//
// What it leaves out: structured replies, block status and metadata
// contexts, TLS (NOTLS mode: NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP),
// extended headers, NBD_CMD_CACHE, NBD_FLAG_SEND_FAST_ZERO, resize and
// the oldstyle handshake.
//
// Bounds: every value a peer sends is checked before it is used. The
// server hangs up on a bad magic, an option of more than 8 KiB of data,
// more than 256 options, a handshake longer than HandshakeTimeout, or a
// write of more than 32 MiB (its data would have to be read to find the
// next request); it answers a read of more than 32 MiB, a request past
// the end (offset+length is checked without overflow), a name over 4096
// bytes in NBD_OPT_GO and the like with an error and goes on. Requests of
// a connection are served concurrently, up to MaxInFlight and 64 MiB of
// data buffers at once, and replied to as they complete, in any order. The
// client bounds what a server sends likewise, and hangs up on a reply to
// a handle not in flight.
//
// The Export interface is sector-granular, in the shape of btt.Device's
// methods (ReadV, WriteV, WriteZeroes, Flush, SectorSize, NumSectors, and
// ReadOnly if it has it), so that a *btt.Device is served as it is.
//
// The Client speaks fixed newstyle with NBD_OPT_GO (asking for
// NBD_INFO_BLOCK_SIZE, and falling back to NBD_OPT_EXPORT_NAME on
// NBD_REP_ERR_UNSUP) and simple replies; it is safe for concurrent use and
// pipelined, keeping up to MaxInFlight requests in flight and splitting
// reads and writes at the server's maximum payload. It checks alignment to
// the server's minimum block size and the export's end before sending.
// ParseURI reads the NBD URIs of NetworkBlockDevice/nbd doc/uri.md
// (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH) into an
// Address to dial or listen on.
//
// Server.Close stops accepting, stops reading requests, lets the requests
// in flight complete and their replies go out, then closes every
// connection and returns.
//
// The on-wire structs and every number of the protocol are in wire.go.
package nbd
