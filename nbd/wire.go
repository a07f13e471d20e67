package nbd

// The NBD wire format (NetworkBlockDevice/nbd doc/proto.md). Every number
// the protocol defines and everything that knows a byte offset lives in
// this file; wire_test.go pins the encodings with golden bytes. All
// integers are big-endian ("network byte order").

import (
	"encoding/binary"
	"errors"
	"fmt"
)

var be = binary.BigEndian

// Magic numbers.
const (
	nbdMagic             uint64 = 0x4e42444d41474943 // "NBDMAGIC", the greeting's first word
	optMagic             uint64 = 0x49484156454f5054 // "IHAVEOPT": greeting, every option request
	optReplyMagic        uint64 = 0x0003e889045565a9 // every fixed-newstyle option reply
	requestMagic         uint32 = 0x25609513         // NBD_REQUEST_MAGIC
	simpleReplyMagic     uint32 = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	structuredReplyMagic uint32 = 0x668e33ef         // NBD_STRUCTURED_REPLY_MAGIC (never negotiated here)
)

// Handshake flags (server, 16 bits) and client flags (32 bits).
const (
	flagFixedNewstyle uint16 = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      uint16 = 1 << 1 // NBD_FLAG_NO_ZEROES

	clientFixedNewstyle uint32 = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	clientNoZeroes      uint32 = 1 << 1 // NBD_FLAG_C_NO_ZEROES
)

// Transmission flags (16 bits), sent with the export's size.
const (
	tflagHasFlags        uint16 = 1 << 0 // NBD_FLAG_HAS_FLAGS, always set
	tflagReadOnly        uint16 = 1 << 1 // NBD_FLAG_READ_ONLY
	tflagSendFlush       uint16 = 1 << 2 // NBD_FLAG_SEND_FLUSH
	tflagSendFUA         uint16 = 1 << 3 // NBD_FLAG_SEND_FUA
	tflagRotational      uint16 = 1 << 4 // NBD_FLAG_ROTATIONAL
	tflagSendTrim        uint16 = 1 << 5 // NBD_FLAG_SEND_TRIM
	tflagSendWriteZeroes uint16 = 1 << 6 // NBD_FLAG_SEND_WRITE_ZEROES
	tflagSendDF          uint16 = 1 << 7 // NBD_FLAG_SEND_DF (structured replies only)
	tflagCanMultiConn    uint16 = 1 << 8 // NBD_FLAG_CAN_MULTI_CONN
)

// Option types (option request offset 8).
const (
	optExportName      uint32 = 1  // NBD_OPT_EXPORT_NAME
	optAbort           uint32 = 2  // NBD_OPT_ABORT
	optList            uint32 = 3  // NBD_OPT_LIST
	optStartTLS        uint32 = 5  // NBD_OPT_STARTTLS
	optInfo            uint32 = 6  // NBD_OPT_INFO
	optGo              uint32 = 7  // NBD_OPT_GO
	optStructuredReply uint32 = 8  // NBD_OPT_STRUCTURED_REPLY
	optListMetaContext uint32 = 9  // NBD_OPT_LIST_META_CONTEXT
	optSetMetaContext  uint32 = 10 // NBD_OPT_SET_META_CONTEXT
)

// Option reply types (option reply offset 12). Errors have bit 31 set.
const (
	repAck  uint32 = 1 // NBD_REP_ACK
	repServ uint32 = 2 // NBD_REP_SERVER
	repInfo uint32 = 3 // NBD_REP_INFO

	repErrBit           uint32 = 1 << 31
	repErrUnsup         uint32 = repErrBit + 1 // NBD_REP_ERR_UNSUP
	repErrPolicy        uint32 = repErrBit + 2 // NBD_REP_ERR_POLICY
	repErrInvalid       uint32 = repErrBit + 3 // NBD_REP_ERR_INVALID
	repErrPlatform      uint32 = repErrBit + 4 // NBD_REP_ERR_PLATFORM
	repErrTLSReqd       uint32 = repErrBit + 5 // NBD_REP_ERR_TLS_REQD
	repErrUnknown       uint32 = repErrBit + 6 // NBD_REP_ERR_UNKNOWN
	repErrShutdown      uint32 = repErrBit + 7 // NBD_REP_ERR_SHUTDOWN
	repErrBlockSizeReqd uint32 = repErrBit + 8 // NBD_REP_ERR_BLOCK_SIZE_REQD
	repErrTooBig        uint32 = repErrBit + 9 // NBD_REP_ERR_TOO_BIG
)

// Information types of NBD_REP_INFO (its payload's offset 0) and of the
// information requests in NBD_OPT_INFO and NBD_OPT_GO.
const (
	infoExport      uint16 = 0 // NBD_INFO_EXPORT
	infoName        uint16 = 1 // NBD_INFO_NAME
	infoDescription uint16 = 2 // NBD_INFO_DESCRIPTION
	infoBlockSize   uint16 = 3 // NBD_INFO_BLOCK_SIZE
)

// Request types (request offset 6).
const (
	cmdRead        uint16 = 0 // NBD_CMD_READ
	cmdWrite       uint16 = 1 // NBD_CMD_WRITE
	cmdDisc        uint16 = 2 // NBD_CMD_DISC
	cmdFlush       uint16 = 3 // NBD_CMD_FLUSH
	cmdTrim        uint16 = 4 // NBD_CMD_TRIM
	cmdCache       uint16 = 5 // NBD_CMD_CACHE
	cmdWriteZeroes uint16 = 6 // NBD_CMD_WRITE_ZEROES
	cmdBlockStatus uint16 = 7 // NBD_CMD_BLOCK_STATUS
)

// Command flags (request offset 4).
const (
	cmdFlagFUA      uint16 = 1 << 0 // NBD_CMD_FLAG_FUA
	cmdFlagNoHole   uint16 = 1 << 1 // NBD_CMD_FLAG_NO_HOLE (write zeroes)
	cmdFlagDF       uint16 = 1 << 2 // NBD_CMD_FLAG_DF (read, structured replies)
	cmdFlagReqOne   uint16 = 1 << 3 // NBD_CMD_FLAG_REQ_ONE (block status)
	cmdFlagFastZero uint16 = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO (write zeroes)
)

// Error values of the simple reply (offset 4): "Error values".
const (
	errnoPerm     uint32 = 1   // NBD_EPERM
	errnoIO       uint32 = 5   // NBD_EIO
	errnoNoMem    uint32 = 12  // NBD_ENOMEM
	errnoInval    uint32 = 22  // NBD_EINVAL
	errnoNoSpace  uint32 = 28  // NBD_ENOSPC
	errnoOverflow uint32 = 75  // NBD_EOVERFLOW
	errnoNotSup   uint32 = 95  // NBD_ENOTSUP
	errnoShutdown uint32 = 108 // NBD_ESHUTDOWN
)

// Sizes of the fixed-size messages, and the protocol's limits.
const (
	greetingSize          = 18  // server greeting
	clientFlagsSize       = 4   // client flags
	optionHeaderSize      = 16  // option request, before its data
	optionReplyHeaderSize = 20  // option reply, before its data
	exportNameReplySize   = 10  // reply to NBD_OPT_EXPORT_NAME, before the zeroes
	exportNameZeroes      = 124 // reserved zeroes after it unless NO_ZEROES
	infoExportSize        = 12  // NBD_REP_INFO payload of NBD_INFO_EXPORT
	infoBlockSizeSize     = 14  // NBD_REP_INFO payload of NBD_INFO_BLOCK_SIZE
	requestSize           = 28  // transmission request, before a write's data
	simpleReplySize       = 16  // simple reply, before a read's data

	// maxStringLength: "MUST be no longer than 4096 bytes" (export names,
	// error messages).
	maxStringLength = 4096
	// defaultMaxPayload is the payload the spec says every server should
	// take and no client should exceed without size constraints: 2^25.
	defaultMaxPayload = 32 << 20
	// maxMinBlockSize: an advertised minimum block size "MUST NOT be larger
	// than 2^16".
	maxMinBlockSize = 1 << 16
	// The size constraints of a server that sends none ("Size
	// constraints"): any alignment, 4 KiB preferred, defaultMaxPayload.
	defaultMinBlock       = 1
	defaultPreferredBlock = 4096

	// defaultPort is the IANA-assigned NBD port, for a URI without one
	// (doc/uri.md).
	defaultPort = 10809
)

// errMalformed reports bytes that are not the message they should be; the
// side that reads them hangs up.
var errMalformed = errors.New("malformed message")

// greeting is what the server sends first in newstyle negotiation.
//
//	offset 0   u64 NBDMAGIC
//	offset 8   u64 IHAVEOPT
//	offset 16  u16 handshake flags
type greeting struct {
	flags uint16
}

func (g greeting) appendTo(b []byte) []byte {
	b = be.AppendUint64(b, nbdMagic)
	b = be.AppendUint64(b, optMagic)
	return be.AppendUint16(b, g.flags)
}

// parseGreeting refuses the oldstyle greeting (cliserv_magic at offset 8)
// along with any other.
func parseGreeting(b []byte) (greeting, error) {
	if len(b) != greetingSize || be.Uint64(b[0:]) != nbdMagic || be.Uint64(b[8:]) != optMagic {
		return greeting{}, fmt.Errorf("%w: greeting % x", errMalformed, b)
	}
	return greeting{flags: be.Uint16(b[16:])}, nil
}

// optionHeader begins every option request.
//
//	offset 0   u64 IHAVEOPT
//	offset 8   u32 option
//	offset 12  u32 length of the data that follows
type optionHeader struct {
	option uint32
	length uint32
}

func (h optionHeader) appendTo(b []byte) []byte {
	b = be.AppendUint64(b, optMagic)
	b = be.AppendUint32(b, h.option)
	return be.AppendUint32(b, h.length)
}

func parseOptionHeader(b []byte) (optionHeader, error) {
	if len(b) != optionHeaderSize || be.Uint64(b[0:]) != optMagic {
		return optionHeader{}, fmt.Errorf("%w: option header % x", errMalformed, b)
	}
	return optionHeader{option: be.Uint32(b[8:]), length: be.Uint32(b[12:])}, nil
}

// optionReplyHeader begins every fixed-newstyle option reply.
//
//	offset 0   u64 0x3e889045565a9
//	offset 8   u32 option replied to
//	offset 12  u32 reply type
//	offset 16  u32 length of the data that follows
type optionReplyHeader struct {
	option    uint32
	replyType uint32
	length    uint32
}

func (h optionReplyHeader) appendTo(b []byte) []byte {
	b = be.AppendUint64(b, optReplyMagic)
	b = be.AppendUint32(b, h.option)
	b = be.AppendUint32(b, h.replyType)
	return be.AppendUint32(b, h.length)
}

func parseOptionReplyHeader(b []byte) (optionReplyHeader, error) {
	if len(b) != optionReplyHeaderSize || be.Uint64(b[0:]) != optReplyMagic {
		return optionReplyHeader{}, fmt.Errorf("%w: option reply header % x", errMalformed, b)
	}
	return optionReplyHeader{option: be.Uint32(b[8:]), replyType: be.Uint32(b[12:]), length: be.Uint32(b[16:])}, nil
}

// exportNameReply answers NBD_OPT_EXPORT_NAME; exportNameZeroes zero bytes
// follow unless both sides agreed on NO_ZEROES.
//
//	offset 0  u64 export size in bytes
//	offset 8  u16 transmission flags
type exportNameReply struct {
	size  uint64
	flags uint16
}

func (r exportNameReply) appendTo(b []byte) []byte {
	b = be.AppendUint64(b, r.size)
	return be.AppendUint16(b, r.flags)
}

func parseExportNameReply(b []byte) (exportNameReply, error) {
	if len(b) != exportNameReplySize {
		return exportNameReply{}, fmt.Errorf("%w: export reply of %d bytes", errMalformed, len(b))
	}
	return exportNameReply{size: be.Uint64(b[0:]), flags: be.Uint16(b[8:])}, nil
}

// infoExportPayload is the data of NBD_REP_INFO for NBD_INFO_EXPORT.
//
//	offset 0   u16 NBD_INFO_EXPORT
//	offset 2   u64 export size in bytes
//	offset 10  u16 transmission flags
type infoExportPayload struct {
	size  uint64
	flags uint16
}

func (p infoExportPayload) appendTo(b []byte) []byte {
	b = be.AppendUint16(b, infoExport)
	b = be.AppendUint64(b, p.size)
	return be.AppendUint16(b, p.flags)
}

func parseInfoExport(b []byte) (infoExportPayload, error) {
	if len(b) != infoExportSize || be.Uint16(b) != infoExport {
		return infoExportPayload{}, fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", errMalformed, len(b))
	}
	return infoExportPayload{size: be.Uint64(b[2:]), flags: be.Uint16(b[10:])}, nil
}

// infoBlockSizePayload is the data of NBD_REP_INFO for NBD_INFO_BLOCK_SIZE
// ("Size constraints").
//
//	offset 0   u16 NBD_INFO_BLOCK_SIZE
//	offset 2   u32 minimum block size
//	offset 6   u32 preferred block size
//	offset 10  u32 maximum payload size
type infoBlockSizePayload struct {
	min, preferred, maxPayload uint32
}

func (p infoBlockSizePayload) appendTo(b []byte) []byte {
	b = be.AppendUint16(b, infoBlockSize)
	b = be.AppendUint32(b, p.min)
	b = be.AppendUint32(b, p.preferred)
	return be.AppendUint32(b, p.maxPayload)
}

func parseInfoBlockSize(b []byte) (infoBlockSizePayload, error) {
	if len(b) != infoBlockSizeSize || be.Uint16(b) != infoBlockSize {
		return infoBlockSizePayload{}, fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes", errMalformed, len(b))
	}
	return infoBlockSizePayload{min: be.Uint32(b[2:]), preferred: be.Uint32(b[6:]), maxPayload: be.Uint32(b[10:])}, nil
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
//
//	offset 0      u32 length of name (n)
//	offset 4      name, n bytes
//	offset 4+n    u16 number of information requests (k)
//	offset 6+n    k × u16 information types
type infoRequest struct {
	name  string
	infos []uint16
}

func (r infoRequest) appendTo(b []byte) []byte {
	b = be.AppendUint32(b, uint32(len(r.name)))
	b = append(b, r.name...)
	b = be.AppendUint16(b, uint16(len(r.infos)))
	for _, t := range r.infos {
		b = be.AppendUint16(b, t)
	}
	return b
}

// parseInfoRequest takes the whole option data: the name length must leave
// room for the count, and the count must account for every byte left.
func parseInfoRequest(b []byte) (infoRequest, error) {
	if len(b) < 6 {
		return infoRequest{}, fmt.Errorf("%w: info request of %d bytes", errMalformed, len(b))
	}
	n := be.Uint32(b)
	if uint64(n) > uint64(len(b))-6 {
		return infoRequest{}, fmt.Errorf("%w: name of %d bytes in %d of data", errMalformed, n, len(b))
	}
	rest := b[4+n:]
	k := int(be.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*k {
		return infoRequest{}, fmt.Errorf("%w: %d information requests in %d bytes", errMalformed, k, len(rest))
	}
	r := infoRequest{name: string(b[4 : 4+n]), infos: make([]uint16, k)}
	for i := range r.infos {
		r.infos[i] = be.Uint16(rest[2*i:])
	}
	return r, nil
}

// serverPayload is the data of NBD_REP_SERVER, one export in NBD_OPT_LIST's
// answer.
//
//	offset 0  u32 length of name (n)
//	offset 4  name, n bytes
//	then      a description for humans, to the end of the data (unused here)
type serverPayload struct {
	name string
}

func (p serverPayload) appendTo(b []byte) []byte {
	b = be.AppendUint32(b, uint32(len(p.name)))
	return append(b, p.name...)
}

func parseServerPayload(b []byte) (serverPayload, error) {
	if len(b) < 4 || uint64(be.Uint32(b)) > uint64(len(b))-4 {
		return serverPayload{}, fmt.Errorf("%w: NBD_REP_SERVER of %d bytes", errMalformed, len(b))
	}
	return serverPayload{name: string(b[4 : 4+be.Uint32(b)])}, nil
}

// request is a transmission request; a write's data follows it.
//
//	offset 0   u32 NBD_REQUEST_MAGIC
//	offset 4   u16 command flags
//	offset 6   u16 type
//	offset 8   u64 handle (the spec's newer name: cookie)
//	offset 16  u64 offset
//	offset 24  u32 length
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

func (r request) appendTo(b []byte) []byte {
	b = be.AppendUint32(b, requestMagic)
	b = be.AppendUint16(b, r.flags)
	b = be.AppendUint16(b, r.typ)
	b = be.AppendUint64(b, r.handle)
	b = be.AppendUint64(b, r.offset)
	return be.AppendUint32(b, r.length)
}

func parseRequest(b []byte) (request, error) {
	if len(b) != requestSize || be.Uint32(b) != requestMagic {
		return request{}, fmt.Errorf("%w: request % x", errMalformed, b)
	}
	return request{flags: be.Uint16(b[4:]), typ: be.Uint16(b[6:]), handle: be.Uint64(b[8:]),
		offset: be.Uint64(b[16:]), length: be.Uint32(b[24:])}, nil
}

// simpleReply answers a request; a successful read's data follows it.
//
//	offset 0  u32 NBD_SIMPLE_REPLY_MAGIC
//	offset 4  u32 error (0 on success)
//	offset 8  u64 handle of the request
type simpleReply struct {
	errno  uint32
	handle uint64
}

func (r simpleReply) appendTo(b []byte) []byte {
	b = be.AppendUint32(b, simpleReplyMagic)
	b = be.AppendUint32(b, r.errno)
	return be.AppendUint64(b, r.handle)
}

func parseSimpleReply(b []byte) (simpleReply, error) {
	if len(b) != simpleReplySize {
		return simpleReply{}, fmt.Errorf("%w: reply of %d bytes", errMalformed, len(b))
	}
	if m := be.Uint32(b); m != simpleReplyMagic {
		if m == structuredReplyMagic {
			return simpleReply{}, fmt.Errorf("%w: a structured reply, never negotiated", errMalformed)
		}
		return simpleReply{}, fmt.Errorf("%w: reply % x", errMalformed, b)
	}
	return simpleReply{errno: be.Uint32(b[4:]), handle: be.Uint64(b[8:])}, nil
}
