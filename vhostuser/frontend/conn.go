// Package frontend is a vhost-user front-end (driver) in Go: it plays the
// part QEMU plays for a vhost-user-blk back-end. It shares memfd-backed
// "guest" memory, lays out driver-side split rings in it and submits
// virtio-blk requests, so tests, `nvblk bench` and the conformance suite can
// drive any vhost-user-blk socket (ours or qemu-storage-daemon's) without a
// VM. Raw access (arbitrary message bytes, fds and descriptors) is there for
// hostile tests.
package frontend

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/nvblk/nvblk/vhostuser"
	"golang.org/x/sys/unix"
)

// ErrNack is returned when the back-end answers a REPLY_ACK with non-zero.
var ErrNack = errors.New("frontend: back-end rejected the request")

// ErrBadReply is returned for a reply that does not match its request.
var ErrBadReply = errors.New("frontend: bad reply")

// DefaultTimeout bounds how long a reply is waited for.
const DefaultTimeout = 10 * time.Second

// Conn is a vhost-user connection to a back-end. Request/reply pairs are
// serialised; it is safe for concurrent use.
type Conn struct {
	c       *net.UnixConn
	Timeout time.Duration // per reply; DefaultTimeout if zero

	mu       sync.Mutex // guards protocol and the request/reply pairing on c
	protocol uint64     // negotiated protocol features
}

// Dial connects to the back-end's socket.
func Dial(path string) (*Conn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("frontend: dial %s: %w", path, err)
	}
	return &Conn{c: c}, nil
}

// NewConn makes c, a connection to a back-end's socket made some other way
// than Dial, a Conn; the Conn owns c.
func NewConn(c *net.UnixConn) *Conn { return &Conn{c: c} }

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// UnixConn exposes the socket for hostile tests.
func (c *Conn) UnixConn() *net.UnixConn { return c.c }

// SetProtocolFeatures records what SET_PROTOCOL_FEATURES negotiated, which
// decides whether Do asks for REPLY_ACK.
func (c *Conn) SetProtocolFeatures(p uint64) {
	c.mu.Lock()
	c.protocol = p
	c.mu.Unlock()
}

// SendRaw writes b as-is with fds attached (the fds stay the caller's).
func (c *Conn) SendRaw(b []byte, fds []int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return vhostuser.WriteMessage(c.c, b, fds)
}

// Recv reads one message; any fds that came with it are closed.
func (c *Conn) Recv() (vhostuser.Header, []byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recvLocked()
}

// The caller holds c.mu.
func (c *Conn) recvLocked() (vhostuser.Header, []byte, error) {
	t := c.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	c.c.SetReadDeadline(time.Now().Add(t))
	defer c.c.SetReadDeadline(time.Time{})
	hdr, payload, fds, err := vhostuser.ReadMessage(c.c)
	for _, fd := range fds {
		unix.Close(fd)
	}
	return hdr, payload, err
}

// hasReply lists requests whose reply is their own payload, not an ack:
// SET_LOG_BASE's once LOG_SHMFD is negotiated (QEMU waits for it).
//
// The caller holds c.mu.
func (c *Conn) hasReplyLocked(req vhostuser.Request) bool {
	switch req {
	case vhostuser.ReqGetFeatures, vhostuser.ReqGetProtocolFeatures, vhostuser.ReqGetVringBase,
		vhostuser.ReqGetQueueNum, vhostuser.ReqGetConfig, vhostuser.ReqGetMaxMemSlots, vhostuser.ReqGetStatus:
		return true
	case vhostuser.ReqSetLogBase:
		return c.protocol&vhostuser.ProtoLogSHMFD != 0
	}
	return false
}

// Call sends one request and returns its reply payload. Requests with a
// reply of their own return it; the others ask for a REPLY_ACK when it was
// negotiated (or when flags has NEED_REPLY) and fail with ErrNack on a
// non-zero ack, else return nil without waiting.
func (c *Conn) Call(req vhostuser.Request, payload []byte, fds []int) ([]byte, error) {
	return c.CallFlags(req, 0, payload, fds)
}

// CallFlags is Call with extra header flags (the version bit is added).
func (c *Conn) CallFlags(req vhostuser.Request, flags uint32, payload []byte, fds []int) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	flags |= vhostuser.FlagVersion
	hasReply := c.hasReplyLocked(req)
	wantAck := !hasReply && c.protocol&vhostuser.ProtoReplyAck != 0
	if wantAck {
		flags |= vhostuser.FlagNeedReply
	}
	if err := vhostuser.WriteMessage(c.c, vhostuser.EncodeMessage(req, flags, payload), fds); err != nil {
		return nil, fmt.Errorf("frontend: %v: %w", req, err)
	}
	if !hasReply && flags&vhostuser.FlagNeedReply == 0 {
		return nil, nil
	}
	hdr, reply, err := c.recvLocked()
	if err != nil {
		return nil, fmt.Errorf("frontend: %v reply: %w", req, err)
	}
	if hdr.Request != req || hdr.Flags != vhostuser.FlagVersion|vhostuser.FlagReply {
		return nil, fmt.Errorf("%w: %v answered by %v flags %#x", ErrBadReply, req, hdr.Request, hdr.Flags)
	}
	if hasReply {
		return reply, nil
	}
	ack, err := vhostuser.DecodeU64(reply)
	if err != nil {
		return nil, fmt.Errorf("%w: %v ack: %v", ErrBadReply, req, err)
	}
	if ack != 0 {
		return nil, fmt.Errorf("%w: %v (ack %d)", ErrNack, req, ack)
	}
	return nil, nil
}

// GetU64 performs a request whose reply is a u64.
func (c *Conn) GetU64(req vhostuser.Request) (uint64, error) {
	b, err := c.Call(req, nil, nil)
	if err != nil {
		return 0, err
	}
	v, err := vhostuser.DecodeU64(b)
	if err != nil {
		return 0, fmt.Errorf("frontend: %v: %w", req, err)
	}
	return v, nil
}

// SetU64 performs a request with a u64 payload.
func (c *Conn) SetU64(req vhostuser.Request, v uint64) error {
	_, err := c.Call(req, vhostuser.EncodeU64(v), nil)
	return err
}

// SetVringState performs SET_VRING_NUM/BASE/ENABLE.
func (c *Conn) SetVringState(req vhostuser.Request, index, num uint32) error {
	_, err := c.Call(req, vhostuser.VringState{Index: index, Num: num}.Encode(), nil)
	return err
}

// GetVringBase stops ring index and returns its last avail index.
func (c *Conn) GetVringBase(index uint32) (uint32, error) {
	b, err := c.Call(vhostuser.ReqGetVringBase, vhostuser.VringState{Index: index}.Encode(), nil)
	if err != nil {
		return 0, err
	}
	st, err := vhostuser.DecodeVringState(b)
	if err != nil {
		return 0, fmt.Errorf("frontend: GET_VRING_BASE: %w", err)
	}
	if st.Index != index {
		return 0, fmt.Errorf("%w: GET_VRING_BASE for %d answered for %d", ErrBadReply, index, st.Index)
	}
	return st.Num, nil
}

// SetVringFD performs SET_VRING_KICK/CALL/ERR; fd < 0 sends the NOFD bit.
func (c *Conn) SetVringFD(req vhostuser.Request, index uint32, fd int) error {
	v := uint64(index)
	var fds []int
	if fd < 0 {
		v |= vhostuser.VringNoFD
	} else {
		fds = []int{fd}
	}
	_, err := c.Call(req, vhostuser.EncodeU64(v), fds)
	return err
}

// GetConfig reads size bytes of device config space at offset. The reply
// must be exactly the size asked.
func (c *Conn) GetConfig(offset, size uint32) ([]byte, error) {
	b, err := c.Call(vhostuser.ReqGetConfig, vhostuser.ConfigSpace{Offset: offset, Payload: make([]byte, size)}.Encode(), nil)
	if err != nil {
		return nil, err
	}
	cs, err := vhostuser.DecodeConfigSpace(b)
	if err != nil {
		return nil, fmt.Errorf("frontend: GET_CONFIG: %w", err)
	}
	if cs.Size != size || cs.Offset != offset {
		return nil, fmt.Errorf("%w: GET_CONFIG asked %d@%d, got %d@%d", ErrBadReply, size, offset, cs.Size, cs.Offset)
	}
	return cs.Payload, nil
}
