package vhostuser

// The vhost-user wire format (QEMU docs/interop/vhost-user.rst, "Message
// Specification"). Everything that knows a byte offset lives in this file;
// wire_test.go pins the sizes and offsets with golden bytes. All integers are
// in host byte order, which on every platform QEMU runs vhost-user on that we
// build for is little-endian.

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request is a front-end request type (header offset 0).
type Request uint32

// Front-end request types.
const (
	ReqGetFeatures         Request = 1
	ReqSetFeatures         Request = 2
	ReqSetOwner            Request = 3
	ReqResetOwner          Request = 4
	ReqSetMemTable         Request = 5
	ReqSetLogBase          Request = 6
	ReqSetLogFD            Request = 7
	ReqSetVringNum         Request = 8
	ReqSetVringAddr        Request = 9
	ReqSetVringBase        Request = 10
	ReqGetVringBase        Request = 11
	ReqSetVringKick        Request = 12
	ReqSetVringCall        Request = 13
	ReqSetVringErr         Request = 14
	ReqGetProtocolFeatures Request = 15
	ReqSetProtocolFeatures Request = 16
	ReqGetQueueNum         Request = 17
	ReqSetVringEnable      Request = 18
	ReqSendRARP            Request = 19
	ReqNetSetMTU           Request = 20
	ReqSetBackendReqFD     Request = 21
	ReqIOTLBMsg            Request = 22
	ReqSetVringEndian      Request = 23
	ReqGetConfig           Request = 24
	ReqSetConfig           Request = 25
	ReqCreateCryptoSession Request = 26
	ReqCloseCryptoSession  Request = 27
	ReqPostcopyAdvise      Request = 28
	ReqPostcopyListen      Request = 29
	ReqPostcopyEnd         Request = 30
	ReqGetInflightFD       Request = 31
	ReqSetInflightFD       Request = 32
	ReqGPUSetSocket        Request = 33
	ReqResetDevice         Request = 34
	ReqVringKick           Request = 35
	ReqGetMaxMemSlots      Request = 36
	ReqAddMemReg           Request = 37
	ReqRemMemReg           Request = 38
	ReqSetStatus           Request = 39
	ReqGetStatus           Request = 40
)

// Back-end request types: messages the back-end sends on the channel the
// front-end gave it with SET_BACKEND_REQ_FD (BACKEND_REQ protocol feature).
const (
	// BackendReqConfigChange tells the front-end the device's config space
	// changed (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG): it reads it again
	// with GET_CONFIG and tells the guest.
	BackendReqConfigChange Request = 2
)

var requestNames = [...]string{
	ReqGetFeatures: "GET_FEATURES", ReqSetFeatures: "SET_FEATURES",
	ReqSetOwner: "SET_OWNER", ReqResetOwner: "RESET_OWNER",
	ReqSetMemTable: "SET_MEM_TABLE", ReqSetLogBase: "SET_LOG_BASE",
	ReqSetLogFD: "SET_LOG_FD", ReqSetVringNum: "SET_VRING_NUM",
	ReqSetVringAddr: "SET_VRING_ADDR", ReqSetVringBase: "SET_VRING_BASE",
	ReqGetVringBase: "GET_VRING_BASE", ReqSetVringKick: "SET_VRING_KICK",
	ReqSetVringCall: "SET_VRING_CALL", ReqSetVringErr: "SET_VRING_ERR",
	ReqGetProtocolFeatures: "GET_PROTOCOL_FEATURES",
	ReqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	ReqGetQueueNum:         "GET_QUEUE_NUM", ReqSetVringEnable: "SET_VRING_ENABLE",
	ReqSendRARP: "SEND_RARP", ReqNetSetMTU: "NET_SET_MTU",
	ReqSetBackendReqFD: "SET_BACKEND_REQ_FD", ReqIOTLBMsg: "IOTLB_MSG",
	ReqSetVringEndian: "SET_VRING_ENDIAN", ReqGetConfig: "GET_CONFIG",
	ReqSetConfig: "SET_CONFIG", ReqCreateCryptoSession: "CREATE_CRYPTO_SESSION",
	ReqCloseCryptoSession: "CLOSE_CRYPTO_SESSION", ReqPostcopyAdvise: "POSTCOPY_ADVISE",
	ReqPostcopyListen: "POSTCOPY_LISTEN", ReqPostcopyEnd: "POSTCOPY_END",
	ReqGetInflightFD: "GET_INFLIGHT_FD", ReqSetInflightFD: "SET_INFLIGHT_FD",
	ReqGPUSetSocket: "GPU_SET_SOCKET", ReqResetDevice: "RESET_DEVICE",
	ReqVringKick: "VRING_KICK", ReqGetMaxMemSlots: "GET_MAX_MEM_SLOTS",
	ReqAddMemReg: "ADD_MEM_REG", ReqRemMemReg: "REM_MEM_REG",
	ReqSetStatus: "SET_STATUS", ReqGetStatus: "GET_STATUS",
}

func (r Request) String() string {
	if int(r) < len(requestNames) && requestNames[r] != "" {
		return requestNames[r]
	}
	return fmt.Sprintf("REQUEST_%d", uint32(r))
}

// Header flag bits (header offset 4).
const (
	FlagVersion     uint32 = 0x1 // the only protocol version; lower 2 bits
	flagVersionMask uint32 = 0x3
	FlagReply       uint32 = 0x4 // set on every back-end reply
	FlagNeedReply   uint32 = 0x8 // REPLY_ACK: front-end wants an ack
	// ReplyFlags is exactly what every back-end reply carries.
	ReplyFlags = FlagVersion | FlagReply
)

// FeatureProtocolFeatures is VHOST_USER_F_PROTOCOL_FEATURES, the one
// feature bit vhost-user adds to the device's virtio features: it enables
// GET/SET_PROTOCOL_FEATURES. The virtio bits themselves are package virtio's.
const FeatureProtocolFeatures uint64 = 1 << 30

// FeatureLogAll is VHOST_F_LOG_ALL, the vhost feature bit (in the same
// word as the virtio features) a back-end offers when it can mark the
// guest memory it writes in a dirty log during live migration ("Migration";
// the front-end turns logging on and off with SET_FEATURES).
const FeatureLogAll uint64 = 1 << 26

// Dirty logging ("Migration"): the log is a bitmap with one bit per
// LogPageSize bytes of guest-physical memory, page p at byte p/8, bit p%8.
const (
	LogPageSize = 0x1000 // VHOST_LOG_PAGE
	// VringFLog is VHOST_VRING_F_LOG, bit 0 of SET_VRING_ADDR's flags:
	// writes to the used ring are logged at log_guest_addr.
	VringFLog uint32 = 1 << 0
)

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
const (
	ProtoMQ                uint64 = 1 << 0
	ProtoLogSHMFD          uint64 = 1 << 1
	ProtoReplyAck          uint64 = 1 << 3
	ProtoBackendReq        uint64 = 1 << 5
	ProtoConfig            uint64 = 1 << 9
	ProtoInflightSHMFD     uint64 = 1 << 12
	ProtoResetDevice       uint64 = 1 << 13
	ProtoInbandNotify      uint64 = 1 << 14
	ProtoConfigureMemSlots uint64 = 1 << 15
	ProtoStatus            uint64 = 1 << 16
)

// Limits of the wire format.
const (
	HeaderSize = 12
	// MaxPayloadSize bounds any payload we will read. The largest payload
	// we accept is GET/SET_CONFIG (12+256); unknown requests up to this size
	// are read and discarded, larger ones are malformed.
	MaxPayloadSize = 4096
	// MaxFDs is the most file descriptors one message may carry (QEMU's
	// VHOST_MEMORY_BASELINE_NREGIONS).
	MaxFDs = 8
	// MaxMemRegions is the most regions one SET_MEM_TABLE describes.
	MaxMemRegions = 8
	// MaxMemSlots is what GET_MAX_MEM_SLOTS answers (QEMU's
	// VHOST_USER_MAX_RAM_SLOTS).
	MaxMemSlots = 509
	// MaxConfigSize bounds GET/SET_CONFIG (QEMU's VHOST_USER_MAX_CONFIG_SIZE).
	MaxConfigSize = 256
	// VringNoFD is bit 8 of the SET_VRING_KICK/CALL/ERR u64: no fd, poll.
	VringNoFD uint64 = 1 << 8
	// VringIndexMask is the queue index in the SET_VRING_KICK/CALL/ERR u64.
	VringIndexMask  uint64 = 0xff
	vringFDReserved        = ^(VringNoFD | VringIndexMask)
)

// Payload sizes.
const (
	u64Size        = 8
	vringStateSize = 8
	vringAddrSize  = 40
	memRegionSize  = 32
	memTableHdr    = 8
	singleRegSize  = 8 + memRegionSize
	configHdrSize  = 12
	inflightSize   = 24
	logSize        = 16
)

// ErrMalformed reports a message that violates the wire format; the server
// drops the connection on it.
var ErrMalformed = errors.New("vhostuser: malformed message")

var le = binary.LittleEndian

// Header is the 12-byte message header.
//
//	offset 0  u32 request
//	offset 4  u32 flags
//	offset 8  u32 size of the payload that follows
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32
}

// AppendTo appends the encoded header to b.
func (h Header) AppendTo(b []byte) []byte {
	b = le.AppendUint32(b, uint32(h.Request))
	b = le.AppendUint32(b, h.Flags)
	return le.AppendUint32(b, h.Size)
}

// DecodeHeader decodes the first HeaderSize bytes of b.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes", ErrMalformed, len(b))
	}
	return Header{Request(le.Uint32(b[0:])), le.Uint32(b[4:]), le.Uint32(b[8:])}, nil
}

// EncodeMessage builds header+payload with the payload's length as size.
func EncodeMessage(req Request, flags uint32, payload []byte) []byte {
	b := make([]byte, 0, HeaderSize+len(payload))
	b = Header{req, flags, uint32(len(payload))}.AppendTo(b)
	return append(b, payload...)
}

// EncodeU64 encodes the single-u64 payload.
func EncodeU64(v uint64) []byte { return le.AppendUint64(nil, v) }

// DecodeU64 decodes a single-u64 payload of exactly 8 bytes.
func DecodeU64(b []byte) (uint64, error) {
	if len(b) != u64Size {
		return 0, fmt.Errorf("%w: u64 payload of %d bytes", ErrMalformed, len(b))
	}
	return le.Uint64(b), nil
}

// VringState is the vring state description.
//
//	offset 0  u32 index
//	offset 4  u32 num
type VringState struct {
	Index uint32
	Num   uint32
}

// Encode returns the 8-byte payload.
func (s VringState) Encode() []byte {
	return le.AppendUint32(le.AppendUint32(nil, s.Index), s.Num)
}

// DecodeVringState decodes exactly 8 bytes.
func DecodeVringState(b []byte) (VringState, error) {
	if len(b) != vringStateSize {
		return VringState{}, fmt.Errorf("%w: vring state of %d bytes", ErrMalformed, len(b))
	}
	return VringState{le.Uint32(b[0:]), le.Uint32(b[4:])}, nil
}

// VringAddr is the vring address description. Desc/Used/Avail are front-end
// user (virtual) addresses unless VIRTIO_F_IOMMU_PLATFORM is negotiated.
//
//	offset 0   u32 index
//	offset 4   u32 flags (bit 0: VHOST_VRING_F_LOG)
//	offset 8   u64 descriptor table
//	offset 16  u64 used ring
//	offset 24  u64 available ring
//	offset 32  u64 log (guest address)
type VringAddr struct {
	Index uint32
	Flags uint32
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

// Encode returns the 40-byte payload.
func (a VringAddr) Encode() []byte {
	b := make([]byte, 0, vringAddrSize)
	b = le.AppendUint32(b, a.Index)
	b = le.AppendUint32(b, a.Flags)
	b = le.AppendUint64(b, a.Desc)
	b = le.AppendUint64(b, a.Used)
	b = le.AppendUint64(b, a.Avail)
	return le.AppendUint64(b, a.Log)
}

func decodeVringAddr(b []byte) (VringAddr, error) {
	if len(b) != vringAddrSize {
		return VringAddr{}, fmt.Errorf("%w: vring addr of %d bytes", ErrMalformed, len(b))
	}
	return VringAddr{
		Index: le.Uint32(b[0:]), Flags: le.Uint32(b[4:]),
		Desc: le.Uint64(b[8:]), Used: le.Uint64(b[16:]),
		Avail: le.Uint64(b[24:]), Log: le.Uint64(b[32:]),
	}, nil
}

// MemRegion is one memory region.
//
//	offset 0   u64 guest physical address
//	offset 8   u64 size
//	offset 16  u64 user (front-end virtual) address
//	offset 24  u64 mmap offset into the region's fd
type MemRegion struct {
	GuestAddr  uint64
	Size       uint64
	UserAddr   uint64
	MmapOffset uint64
}

func (r MemRegion) appendTo(b []byte) []byte {
	b = le.AppendUint64(b, r.GuestAddr)
	b = le.AppendUint64(b, r.Size)
	b = le.AppendUint64(b, r.UserAddr)
	return le.AppendUint64(b, r.MmapOffset)
}

func decodeMemRegion(b []byte) MemRegion {
	return MemRegion{le.Uint64(b[0:]), le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:])}
}

// EncodeMemTable returns the SET_MEM_TABLE payload:
//
//	offset 0   u32 number of regions
//	offset 4   u32 padding
//	offset 8   regions, 32 bytes each (only the ones in use are sent)
func EncodeMemTable(regions []MemRegion) []byte {
	b := make([]byte, 0, memTableHdr+memRegionSize*len(regions))
	b = le.AppendUint32(b, uint32(len(regions)))
	b = le.AppendUint32(b, 0)
	for _, r := range regions {
		b = r.appendTo(b)
	}
	return b
}

// EncodeSingleRegion returns the ADD_MEM_REG/REM_MEM_REG payload:
//
//	offset 0   u64 padding
//	offset 8   region (32 bytes)
func EncodeSingleRegion(r MemRegion) []byte {
	return r.appendTo(make([]byte, 8, singleRegSize))
}

// ConfigSpace is the virtio device config space payload.
//
//	offset 0   u32 offset into the device config space
//	offset 4   u32 size of the access
//	offset 8   u32 flags (0: writable fields, 1: live migration)
//	offset 12  size bytes of config space
type ConfigSpace struct {
	Offset  uint32
	Size    uint32
	Flags   uint32
	Payload []byte
}

// Encode returns the 12+len(Payload) payload; Size is taken from Payload.
func (c ConfigSpace) Encode() []byte {
	b := make([]byte, 0, configHdrSize+len(c.Payload))
	b = le.AppendUint32(b, c.Offset)
	b = le.AppendUint32(b, uint32(len(c.Payload)))
	b = le.AppendUint32(b, c.Flags)
	return append(b, c.Payload...)
}

// DecodeConfigSpace decodes a config payload whose size field must match the
// payload exactly and be at most MaxConfigSize.
func DecodeConfigSpace(b []byte) (ConfigSpace, error) {
	if len(b) < configHdrSize {
		return ConfigSpace{}, fmt.Errorf("%w: config payload of %d bytes", ErrMalformed, len(b))
	}
	c := ConfigSpace{Offset: le.Uint32(b[0:]), Size: le.Uint32(b[4:]), Flags: le.Uint32(b[8:])}
	if c.Size > MaxConfigSize || uint64(len(b)) != configHdrSize+uint64(c.Size) {
		return ConfigSpace{}, fmt.Errorf("%w: config size %d in a payload of %d bytes", ErrMalformed, c.Size, len(b))
	}
	c.Payload = b[configHdrSize:]
	return c, nil
}

// Inflight is the inflight description of GET_INFLIGHT_FD (request and
// reply) and SET_INFLIGHT_FD. QEMU's VhostUserInflight is not packed, so
// the C struct's 8-byte alignment pads it to 24 bytes, and QEMU insists on
// exactly sizeof(VhostUserInflight).
//
//	offset 0   u64 mmap size (0 in a reply: no region, no fd)
//	offset 8   u64 mmap offset into the fd
//	offset 16  u16 number of virtqueues
//	offset 18  u16 queue size (entries of each queue's descriptor state array)
//	offset 20  4 bytes padding
type Inflight struct {
	MmapSize   uint64
	MmapOffset uint64
	NumQueues  uint16
	QueueSize  uint16
}

// Encode returns the 24-byte payload (padding zero).
func (i Inflight) Encode() []byte {
	b := make([]byte, 0, inflightSize)
	b = le.AppendUint64(b, i.MmapSize)
	b = le.AppendUint64(b, i.MmapOffset)
	b = le.AppendUint16(b, i.NumQueues)
	b = le.AppendUint16(b, i.QueueSize)
	return le.AppendUint32(b, 0)
}

// DecodeInflight decodes exactly 24 bytes; the padding is ignored.
func DecodeInflight(b []byte) (Inflight, error) {
	if len(b) != inflightSize {
		return Inflight{}, fmt.Errorf("%w: inflight description of %d bytes", ErrMalformed, len(b))
	}
	return Inflight{le.Uint64(b[0:]), le.Uint64(b[8:]), le.Uint16(b[16:]), le.Uint16(b[18:])}, nil
}

// Log is the log description of SET_LOG_BASE: where in the fd that comes
// with it the dirty log lies.
//
//	offset 0   u64 mmap size (bytes of log)
//	offset 8   u64 mmap offset into the fd
type Log struct {
	MmapSize   uint64
	MmapOffset uint64
}

// Encode returns the 16-byte payload.
func (l Log) Encode() []byte {
	return le.AppendUint64(le.AppendUint64(make([]byte, 0, logSize), l.MmapSize), l.MmapOffset)
}

// DecodeLog decodes exactly 16 bytes.
func DecodeLog(b []byte) (Log, error) {
	if len(b) != logSize {
		return Log{}, fmt.Errorf("%w: log description of %d bytes", ErrMalformed, len(b))
	}
	return Log{le.Uint64(b[0:]), le.Uint64(b[8:])}, nil
}

// Message is one decoded front-end request. Exactly the fields for Hdr's
// request type are meaningful.
type Message struct {
	Hdr      Header
	U64      uint64
	State    VringState
	Addr     VringAddr
	Regions  []MemRegion // SET_MEM_TABLE; ADD/REM_MEM_REG use Regions[0]
	Config   ConfigSpace
	Inflight Inflight // GET/SET_INFLIGHT_FD
	Log      Log      // SET_LOG_BASE
	Known    bool     // false: a request this package does not decode; payload ignored
}

// DecodeMessage validates and decodes one request whose payload was read in
// full and which arrived with nfds file descriptors. Sizes and descriptor
// counts must match the request type exactly; a mismatch is ErrMalformed.
// Fuzzed by FuzzDecodeMessage: it must never panic.
func DecodeMessage(hdr Header, payload []byte, nfds int) (Message, error) {
	m := Message{Hdr: hdr, Known: true}
	if hdr.Flags&flagVersionMask != FlagVersion {
		return m, fmt.Errorf("%w: %v: version %d", ErrMalformed, hdr.Request, hdr.Flags&flagVersionMask)
	}
	if hdr.Flags&^(flagVersionMask|FlagNeedReply) != 0 {
		return m, fmt.Errorf("%w: %v: flags %#x", ErrMalformed, hdr.Request, hdr.Flags)
	}
	if uint64(hdr.Size) != uint64(len(payload)) || len(payload) > MaxPayloadSize {
		return m, fmt.Errorf("%w: %v: size %d with %d payload bytes", ErrMalformed, hdr.Request, hdr.Size, len(payload))
	}
	if nfds < 0 || nfds > MaxFDs {
		return m, fmt.Errorf("%w: %v: %d fds", ErrMalformed, hdr.Request, nfds)
	}
	wantFDs := 0
	var err error
	switch hdr.Request {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqSetOwner, ReqResetOwner,
		ReqGetQueueNum, ReqResetDevice, ReqGetMaxMemSlots, ReqGetStatus:
		err = wantSize(payload, 0)
	case ReqSetBackendReqFD:
		// QEMU sends an empty payload; the u64 some front-ends send is
		// unused by the spec.
		if len(payload) != 0 {
			err = wantSize(payload, u64Size)
		}
		wantFDs = 1
	case ReqSetFeatures, ReqSetProtocolFeatures, ReqSetStatus:
		m.U64, err = DecodeU64(payload)
	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		if m.U64, err = DecodeU64(payload); err == nil {
			if m.U64&vringFDReserved != 0 {
				err = fmt.Errorf("%w: reserved bits in %#x", ErrMalformed, m.U64)
			} else if m.U64&VringNoFD == 0 {
				wantFDs = 1
			}
		}
	case ReqSetVringNum, ReqSetVringBase, ReqGetVringBase, ReqSetVringEnable:
		m.State, err = DecodeVringState(payload)
	case ReqSetVringAddr:
		m.Addr, err = decodeVringAddr(payload)
	case ReqSetMemTable:
		if len(payload) < memTableHdr {
			err = fmt.Errorf("%w: mem table of %d bytes", ErrMalformed, len(payload))
			break
		}
		n := le.Uint32(payload[0:])
		if n == 0 || n > MaxMemRegions {
			err = fmt.Errorf("%w: %d memory regions", ErrMalformed, n)
			break
		}
		if err = wantSize(payload, memTableHdr+memRegionSize*int(n)); err != nil {
			break
		}
		m.Regions = make([]MemRegion, n)
		for i := range m.Regions {
			m.Regions[i] = decodeMemRegion(payload[memTableHdr+memRegionSize*i:])
		}
		wantFDs = int(n)
	case ReqAddMemReg, ReqRemMemReg:
		if err = wantSize(payload, singleRegSize); err != nil {
			break
		}
		m.Regions = []MemRegion{decodeMemRegion(payload[8:])}
		wantFDs = 1
		if hdr.Request == ReqRemMemReg && nfds == 0 {
			// The spec says no fd SHOULD be sent but MAY be accepted
			// (and closed) for compatibility.
			wantFDs = 0
		}
	case ReqGetConfig, ReqSetConfig:
		m.Config, err = DecodeConfigSpace(payload)
	case ReqGetInflightFD:
		m.Inflight, err = DecodeInflight(payload)
	case ReqSetInflightFD:
		m.Inflight, err = DecodeInflight(payload)
		wantFDs = 1
	case ReqSetLogBase:
		// The fd is the log; one that is missing is the back-end's to
		// refuse (with the reply QEMU waits for), not a broken stream.
		m.Log, err = DecodeLog(payload)
		wantFDs = min(nfds, 1)
	default:
		m.Known = false
		wantFDs = nfds // owned by nobody; the caller closes them
	}
	if err != nil {
		return m, fmt.Errorf("%v: %w", hdr.Request, err)
	}
	if nfds != wantFDs {
		return m, fmt.Errorf("%w: %v: %d fds, want %d", ErrMalformed, hdr.Request, nfds, wantFDs)
	}
	return m, nil
}

func wantSize(payload []byte, n int) error {
	if len(payload) != n {
		return fmt.Errorf("%w: payload of %d bytes, want %d", ErrMalformed, len(payload), n)
	}
	return nil
}
