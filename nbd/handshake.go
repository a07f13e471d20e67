package nbd

import (
	"errors"
	"fmt"
	"io"
)

// Bounds on what a client may make the server read or do in the
// handshake, past which it hangs up.
const (
	// maxOptionData bounds an option's data: NBD_OPT_GO with the longest
	// name the spec allows and a few hundred information requests. A
	// longer option is not read: the server hangs up (the spec lets it
	// treat an option it deems a denial of service so).
	maxOptionData = 8192
	// maxOptions bounds the options of one handshake (qemu sends four);
	// HandshakeTimeout bounds its time.
	maxOptions = 256
)

// errClientDone: the client ended the handshake with NBD_OPT_ABORT.
var errClientDone = errors.New("client aborted the handshake")

// negotiator is the server's side of fixed newstyle negotiation
// ("Fixed newstyle negotiation", "Option types"), over rw.
type negotiator struct {
	rw     io.ReadWriter
	lookup func(name string) *served
	list   func() []string

	// Set by run on success: the size and flags the client was given.
	size     uint64
	flags    uint16
	noZeroes bool
}

// run greets the client, answers its options and returns the export it
// chose with NBD_OPT_GO or NBD_OPT_EXPORT_NAME; any error means the
// connection is to be closed.
func (n *negotiator) run() (*served, error) {
	if _, err := n.rw.Write(greeting{flags: flagFixedNewstyle | flagNoZeroes}.appendTo(nil)); err != nil {
		return nil, err
	}
	var cf [clientFlagsSize]byte
	if _, err := io.ReadFull(n.rw, cf[:]); err != nil {
		return nil, err
	}
	// A client without NBD_FLAG_C_FIXED_NEWSTYLE is served all the same:
	// such a client can only send NBD_OPT_EXPORT_NAME, which is the same
	// in both.
	flags := be.Uint32(cf[:])
	if flags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, flags)
	}
	n.noZeroes = flags&clientNoZeroes != 0
	hdr := make([]byte, optionHeaderSize)
	for range maxOptions {
		if _, err := io.ReadFull(n.rw, hdr); err != nil {
			return nil, err
		}
		h, err := parseOptionHeader(hdr)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if h.length > maxOptionData {
			return nil, fmt.Errorf("%w: option %d with %d bytes of data, more than %d", ErrProtocol, h.option, h.length, maxOptionData)
		}
		data := make([]byte, h.length)
		if _, err := io.ReadFull(n.rw, data); err != nil {
			return nil, err
		}
		ex, err := n.option(h.option, data)
		if err != nil || ex != nil {
			return ex, err
		}
	}
	return nil, fmt.Errorf("%w: more than %d options", ErrProtocol, maxOptions)
}

// option answers one option; a non-nil export means transmission begins.
func (n *negotiator) option(opt uint32, data []byte) (*served, error) {
	switch opt {
	case optExportName:
		return n.exportName(data)
	case optAbort:
		// The client may hang up before reading the ACK; that is no error.
		n.reply(opt, repAck, nil)
		return nil, errClientDone
	case optList:
		if len(data) != 0 {
			return nil, n.replyError(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
		}
		for _, name := range n.list() {
			if err := n.reply(opt, repServ, serverPayload{name: name}.appendTo(nil)); err != nil {
				return nil, err
			}
		}
		return nil, n.reply(opt, repAck, nil)
	case optInfo, optGo:
		return n.infoGo(opt, data)
	}
	// NBD_OPT_STARTTLS (no TLS here: NOTLS mode), NBD_OPT_STRUCTURED_REPLY,
	// the metadata contexts and anything newer or unknown.
	return nil, n.replyError(opt, repErrUnsup, "option not supported")
}

// exportName answers NBD_OPT_EXPORT_NAME, which cannot fail politely: an
// unknown or overlong name ends the session.
func (n *negotiator) exportName(data []byte) (*served, error) {
	if len(data) > maxStringLength {
		return nil, fmt.Errorf("%w: export name of %d bytes", ErrProtocol, len(data))
	}
	ex := n.lookup(string(data))
	if ex == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownExport, data)
	}
	size, err := ex.size()
	if err != nil {
		return nil, err
	}
	b := exportNameReply{size: size, flags: ex.transmissionFlags()}.appendTo(nil)
	if !n.noZeroes {
		b = append(b, make([]byte, exportNameZeroes)...)
	}
	if _, err := n.rw.Write(b); err != nil {
		return nil, err
	}
	n.size, n.flags = size, ex.transmissionFlags()
	return ex, nil
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO alike, with NBD_INFO_EXPORT
// and NBD_INFO_BLOCK_SIZE whatever the client asked for (the spec lets a
// server send information unasked, and size constraints other than the
// defaults should be sent); GO then begins transmission.
func (n *negotiator) infoGo(opt uint32, data []byte) (*served, error) {
	req, err := parseInfoRequest(data)
	if err != nil {
		return nil, n.replyError(opt, repErrInvalid, err.Error())
	}
	if len(req.name) > maxStringLength {
		return nil, n.replyError(opt, repErrInvalid, "export name longer than 4096 bytes")
	}
	ex := n.lookup(req.name)
	if ex == nil {
		return nil, n.replyError(opt, repErrUnknown, "no such export")
	}
	size, err := ex.size()
	if err != nil {
		return nil, n.replyError(opt, repErrUnknown, err.Error())
	}
	flags := ex.transmissionFlags()
	if err := n.reply(opt, repInfo, infoExportPayload{size: size, flags: flags}.appendTo(nil)); err != nil {
		return nil, err
	}
	bs := infoBlockSizePayload{min: ex.sector, preferred: ex.sector, maxPayload: defaultMaxPayload}
	if err := n.reply(opt, repInfo, bs.appendTo(nil)); err != nil {
		return nil, err
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt != optGo {
		return nil, nil
	}
	n.size, n.flags = size, flags
	return ex, nil
}

func (n *negotiator) reply(opt, typ uint32, data []byte) error {
	b := optionReplyHeader{option: opt, replyType: typ, length: uint32(len(data))}.appendTo(nil)
	_, err := n.rw.Write(append(b, data...))
	return err
}

// replyError sends an error reply with msg for humans; the negotiation
// goes on (the result is only a write's failure).
func (n *negotiator) replyError(opt, typ uint32, msg string) error {
	if len(msg) > maxStringLength {
		msg = msg[:maxStringLength]
	}
	return n.reply(opt, typ, []byte(msg))
}
