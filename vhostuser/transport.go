package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// ErrTooManyFDs reports a message carrying more descriptors than MaxFDs (or
// more than the control buffer could hold, in which case the kernel already
// closed the rest).
var ErrTooManyFDs = errors.New("vhostuser: too many file descriptors in one message")

// oobSize holds one more descriptor than a message may carry so that an
// excess is seen as a count rather than only as MSG_CTRUNC.
var oobSize = unix.CmsgSpace((MaxFDs + 1) * 4)

// DefaultMessageTimeout bounds how long the rest of a message may take once
// its first byte has arrived. A front-end may sit idle between messages for
// as long as it likes, but one that stops half-way through a message would
// otherwise hold one of the backend's few sessions forever.
const DefaultMessageTimeout = 30 * time.Second

// ReadMessage reads one message (header, payload and the descriptors that
// came with it) from c. The returned fds belong to the caller; on error every
// descriptor received so far has been closed. A header announcing a payload
// over MaxPayloadSize is ErrMalformed and nothing more is read.
func ReadMessage(c *net.UnixConn) (Header, []byte, []int, error) {
	return ReadMessageTimeout(c, DefaultMessageTimeout)
}

// ReadMessageTimeout is ReadMessage with its own bound on a message in
// progress (see DefaultMessageTimeout).
func ReadMessageTimeout(c *net.UnixConn, timeout time.Duration) (Header, []byte, []int, error) {
	var fds []int
	fail := func(err error) (Header, []byte, []int, error) {
		CloseFDs(fds)
		return Header{}, nil, nil, err
	}
	oob := make([]byte, oobSize)
	started := false
	defer func() {
		if started {
			c.SetReadDeadline(time.Time{})
		}
	}()
	readFull := func(b []byte) error {
		for got := 0; got < len(b); {
			n, oobn, flags, _, err := c.ReadMsgUnix(b[got:], oob)
			if !started && (n > 0 || oobn > 0) {
				started = true
				c.SetReadDeadline(time.Now().Add(timeout))
			}
			if oobn > 0 {
				more, perr := parseRights(oob[:oobn])
				fds = append(fds, more...)
				if perr != nil {
					return perr
				}
			}
			if flags&unix.MSG_CTRUNC != 0 {
				return fmt.Errorf("%w: control data truncated", ErrTooManyFDs)
			}
			if len(fds) > MaxFDs {
				return fmt.Errorf("%w: %d", ErrTooManyFDs, len(fds))
			}
			got += n
			if err != nil {
				if got > 0 && errors.Is(err, io.EOF) {
					return io.ErrUnexpectedEOF
				}
				return err
			}
			if n == 0 {
				if got > 0 {
					return io.ErrUnexpectedEOF
				}
				return io.EOF
			}
		}
		return nil
	}
	var hb [HeaderSize]byte
	if err := readFull(hb[:]); err != nil {
		return fail(err)
	}
	hdr, _ := DecodeHeader(hb[:])
	if hdr.Size > MaxPayloadSize {
		return fail(fmt.Errorf("%w: %v: payload size %d over %d", ErrMalformed, hdr.Request, hdr.Size, MaxPayloadSize))
	}
	payload := make([]byte, hdr.Size)
	if err := readFull(payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fail(err)
	}
	return hdr, payload, fds, nil
}

// parseRights extracts SCM_RIGHTS descriptors; any other control message is
// an error (but the descriptors found are still returned, to be closed).
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control data: %v", ErrMalformed, err)
	}
	var fds []int
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, fmt.Errorf("%w: control message: %v", ErrMalformed, err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// WriteMessage sends b (header and payload) with fds attached to its first
// byte, as QEMU does.
func WriteMessage(c *net.UnixConn, b []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return err
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("vhostuser: short write: %d of %d bytes", n, len(b))
	}
	return nil
}

// CloseFDs closes every descriptor in fds, for a receiver that keeps none
// of a message's descriptors.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
