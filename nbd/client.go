package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"time"
)

// DefaultClientInFlight is how many requests a Client keeps in flight
// unless ClientOptions.MaxInFlight says otherwise: the server's own
// default, so that neither waits on the other.
const DefaultClientInFlight = DefaultMaxInFlight

// Bounds on what a server may make the client read in the handshake.
const (
	maxOptionReplyData = maxOptionData
	maxOptionReplies   = 64
)

// zeroChunk is the most one trim or write-zeroes request asks for: the
// length field has 32 bits, and a chunk stays aligned to any minimum block
// size.
const zeroChunk = 1 << 30

// ClientOptions configure Dial and NewClient.
type ClientOptions struct {
	// Export is the name of the export to use; "" is the default export.
	Export string
	// MaxInFlight bounds the requests in flight at once; zero means
	// DefaultClientInFlight. Calls past it wait for a reply.
	MaxInFlight int
}

// ExportInfo is what the server told the client about the export.
type ExportInfo struct {
	Size uint64 // bytes
	// Transmission flags.
	ReadOnly, CanFlush, CanFUA, CanTrim, CanWriteZeroes, CanMultiConn bool
	// Size constraints (the defaults when the server sent none): every
	// offset and length must be a multiple of MinBlock, and no read or
	// write is sent larger than MaxPayload (the Client splits them).
	MinBlock, PreferredBlock, MaxPayload uint32
}

// Client is a connection to one export of an NBD server (fixed newstyle
// negotiation, NBD_OPT_GO, falling back to NBD_OPT_EXPORT_NAME with a
// server that lacks it; simple replies). Its methods are safe for
// concurrent use and pipelined: every call sends its requests without
// waiting for earlier replies, up to MaxInFlight at once, and a read or
// write larger than the server's maximum payload is split into requests
// that are in flight together.
type Client struct {
	nc    net.Conn
	info  ExportInfo
	chunk uint32 // the largest read or write payload sent
	slots chan struct{}

	sendMu sync.Mutex // guards writes to nc: a request and its data go out together

	mu      sync.Mutex // guards the fields below
	pending map[uint64]*call
	handle  uint64 // the last handle given out
	err     error  // why the connection is unusable; set once
	closing bool
	// active counts calls submitted and not completed; Add under mu while
	// !closing, so before Close's Wait.
	active sync.WaitGroup

	recvDone chan struct{}
}

// call is a request in flight.
type call struct {
	readBuf []byte     // where a read's data goes
	done    chan error // buffered: receives the result once
}

// Dial connects to the server at address ("unix" or "tcp" network) and
// negotiates opts.Export. ctx bounds the connection and the handshake.
func Dial(ctx context.Context, network, address string, opts ClientOptions) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	c, err := NewClient(ctx, nc, opts)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// NewClient negotiates opts.Export on nc, already connected, and returns
// the client, which owns nc from then on; on an error nc is closed.
func NewClient(ctx context.Context, nc net.Conn, opts ClientOptions) (*Client, error) {
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultClientInFlight
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	info, err := clientHandshake(nc, opts.Export)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = nc.SetDeadline(time.Time{})
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nbd: export %q: %w", opts.Export, err)
	}
	c := &Client{
		nc: nc, info: info,
		chunk:    info.MaxPayload / info.MinBlock * info.MinBlock,
		slots:    make(chan struct{}, opts.MaxInFlight),
		pending:  map[uint64]*call{},
		recvDone: make(chan struct{}),
	}
	go c.receive()
	return c, nil
}

// Info describes the export.
func (c *Client) Info() ExportInfo { return c.info }

// Size is the export's size in bytes.
func (c *Client) Size() uint64 { return c.info.Size }

// clientHandshake runs the client's side of the negotiation.
func clientHandshake(rw io.ReadWriter, export string) (ExportInfo, error) {
	if len(export) > maxStringLength {
		return ExportInfo{}, fmt.Errorf("export name of %d bytes, more than %d", len(export), maxStringLength)
	}
	gb := make([]byte, greetingSize)
	if _, err := io.ReadFull(rw, gb); err != nil {
		return ExportInfo{}, err
	}
	g, err := parseGreeting(gb)
	if err != nil {
		return ExportInfo{}, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	var cflags uint32
	if g.flags&flagFixedNewstyle != 0 {
		cflags |= clientFixedNewstyle
	}
	noZeroes := g.flags&flagNoZeroes != 0
	if noZeroes {
		cflags |= clientNoZeroes
	}
	if _, err := rw.Write(be.AppendUint32(nil, cflags)); err != nil {
		return ExportInfo{}, err
	}
	if g.flags&flagFixedNewstyle == 0 {
		// Plain newstyle knows NBD_OPT_EXPORT_NAME alone.
		return exportNameHandshake(rw, export, noZeroes)
	}
	info, err := goHandshake(rw, export)
	if errors.Is(err, errGoUnsupported) {
		return exportNameHandshake(rw, export, noZeroes)
	}
	return info, err
}

// errGoUnsupported: the server answered NBD_OPT_GO with NBD_REP_ERR_UNSUP.
var errGoUnsupported = errors.New("NBD_OPT_GO not supported")

func goHandshake(rw io.ReadWriter, export string) (ExportInfo, error) {
	data := infoRequest{name: export, infos: []uint16{infoBlockSize}}.appendTo(nil)
	msg := optionHeader{option: optGo, length: uint32(len(data))}.appendTo(nil)
	if _, err := rw.Write(append(msg, data...)); err != nil {
		return ExportInfo{}, err
	}
	info := ExportInfo{MinBlock: defaultMinBlock, PreferredBlock: defaultPreferredBlock, MaxPayload: defaultMaxPayload}
	gotExport := false
	hb := make([]byte, optionReplyHeaderSize)
	for range maxOptionReplies {
		if _, err := io.ReadFull(rw, hb); err != nil {
			return ExportInfo{}, err
		}
		h, err := parseOptionReplyHeader(hb)
		if err != nil {
			return ExportInfo{}, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if h.option != optGo {
			return ExportInfo{}, fmt.Errorf("%w: reply to option %d, not NBD_OPT_GO", ErrProtocol, h.option)
		}
		if h.length > maxOptionReplyData {
			return ExportInfo{}, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, h.length)
		}
		data := make([]byte, h.length)
		if _, err := io.ReadFull(rw, data); err != nil {
			return ExportInfo{}, err
		}
		switch h.replyType {
		case repInfo:
			if len(data) < 2 {
				return ExportInfo{}, fmt.Errorf("%w: NBD_REP_INFO of %d bytes", ErrProtocol, len(data))
			}
			switch be.Uint16(data) {
			case infoExport:
				p, err := parseInfoExport(data)
				if err != nil {
					return ExportInfo{}, fmt.Errorf("%w: %v", ErrProtocol, err)
				}
				info.setFlags(p.size, p.flags)
				gotExport = true
			case infoBlockSize:
				p, err := parseInfoBlockSize(data)
				if err != nil {
					return ExportInfo{}, fmt.Errorf("%w: %v", ErrProtocol, err)
				}
				if err := info.setBlockSizes(p); err != nil {
					return ExportInfo{}, err
				}
			}
			// Other information types are to be ignored.
		case repAck:
			if !gotExport {
				return ExportInfo{}, fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return info, nil
		case repErrUnsup:
			return ExportInfo{}, errGoUnsupported
		case repErrUnknown:
			return ExportInfo{}, fmt.Errorf("%w: %s", ErrUnknownExport, printable(data))
		default:
			if h.replyType&repErrBit != 0 {
				return ExportInfo{}, fmt.Errorf("%w: NBD_OPT_GO: reply %#x: %s", ErrOptionRefused, h.replyType, printable(data))
			}
			return ExportInfo{}, fmt.Errorf("%w: reply type %d to NBD_OPT_GO", ErrProtocol, h.replyType)
		}
	}
	return ExportInfo{}, fmt.Errorf("%w: more than %d replies to NBD_OPT_GO", ErrProtocol, maxOptionReplies)
}

func exportNameHandshake(rw io.ReadWriter, export string, noZeroes bool) (ExportInfo, error) {
	msg := optionHeader{option: optExportName, length: uint32(len(export))}.appendTo(nil)
	if _, err := rw.Write(append(msg, export...)); err != nil {
		return ExportInfo{}, err
	}
	n := exportNameReplySize
	if !noZeroes {
		n += exportNameZeroes
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(rw, b); err != nil {
		if errors.Is(err, io.EOF) {
			// The server's only way to refuse NBD_OPT_EXPORT_NAME.
			return ExportInfo{}, fmt.Errorf("%w: server hung up on NBD_OPT_EXPORT_NAME", ErrUnknownExport)
		}
		return ExportInfo{}, err
	}
	r, err := parseExportNameReply(b[:exportNameReplySize])
	if err != nil {
		return ExportInfo{}, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	info := ExportInfo{MinBlock: defaultMinBlock, PreferredBlock: defaultPreferredBlock, MaxPayload: defaultMaxPayload}
	info.setFlags(r.size, r.flags)
	return info, nil
}

func (i *ExportInfo) setFlags(size uint64, f uint16) {
	i.Size = size
	i.ReadOnly = f&tflagReadOnly != 0
	i.CanFlush = f&tflagSendFlush != 0
	i.CanFUA = f&tflagSendFUA != 0
	i.CanTrim = f&tflagSendTrim != 0
	i.CanWriteZeroes = f&tflagSendWriteZeroes != 0
	i.CanMultiConn = f&tflagCanMultiConn != 0
}

// setBlockSizes takes the server's constraints after checking them as the
// spec bounds them; the maximum payload is taken no larger than 32 MiB.
func (i *ExportInfo) setBlockSizes(p infoBlockSizePayload) error {
	pow2 := func(v uint32) bool { return v != 0 && bits.OnesCount32(v) == 1 }
	if !pow2(p.min) || p.min > maxMinBlockSize || !pow2(p.preferred) || p.preferred < p.min ||
		p.maxPayload < p.min {
		return fmt.Errorf("%w: block sizes min %d, preferred %d, max payload %d", ErrProtocol, p.min, p.preferred, p.maxPayload)
	}
	i.MinBlock, i.PreferredBlock, i.MaxPayload = p.min, p.preferred, min(p.maxPayload, defaultMaxPayload)
	return nil
}

// printable is a server's error message, bounded, for an error string.
func printable(b []byte) string {
	if len(b) > 256 {
		b = b[:256]
	}
	return fmt.Sprintf("%q", b)
}

// receive reads replies until the connection ends, handing each to its
// call.
func (c *Client) receive() {
	defer close(c.recvDone)
	hb := make([]byte, simpleReplySize)
	for {
		if _, err := io.ReadFull(c.nc, hb); err != nil {
			c.fail(err)
			return
		}
		r, err := parseSimpleReply(hb)
		if err != nil {
			c.fail(fmt.Errorf("%w: %v", ErrProtocol, err))
			return
		}
		c.mu.Lock()
		cl := c.pending[r.handle]
		delete(c.pending, r.handle)
		c.mu.Unlock()
		if cl == nil {
			c.fail(fmt.Errorf("%w: reply to handle %d, not in flight", ErrProtocol, r.handle))
			return
		}
		var result error
		if r.errno != 0 {
			result = &RemoteError{Errno: r.errno}
		} else if cl.readBuf != nil {
			if _, err := io.ReadFull(c.nc, cl.readBuf); err != nil {
				c.complete(cl, err)
				c.fail(err)
				return
			}
		}
		c.complete(cl, result)
	}
}

func (c *Client) complete(cl *call, err error) {
	cl.done <- err
	<-c.slots
	c.active.Done()
}

// fail makes the connection unusable: every call in flight and every later
// one gets err.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("nbd: connection failed: %w", err)
	}
	err = c.err
	calls := c.pending
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	c.nc.Close()
	for _, cl := range calls {
		c.complete(cl, err)
	}
}

// submit sends one request (and a write's data) and returns its call
// without waiting for the reply.
func (c *Client) submit(typ, flags uint16, off uint64, length uint32, data, readBuf []byte) (*call, error) {
	c.slots <- struct{}{}
	c.mu.Lock()
	if c.closing || c.err != nil {
		err := c.err
		if c.closing {
			err = ErrClosed
		}
		c.mu.Unlock()
		<-c.slots
		return nil, err
	}
	c.handle++
	cl := &call{readBuf: readBuf, done: make(chan error, 1)}
	c.pending[c.handle] = cl
	c.active.Add(1)
	req := request{flags: flags, typ: typ, handle: c.handle, offset: off, length: length}
	c.mu.Unlock()

	bufs := net.Buffers{req.appendTo(make([]byte, 0, requestSize))}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	c.sendMu.Lock()
	_, err := bufs.WriteTo(c.nc)
	c.sendMu.Unlock()
	if err != nil {
		c.fail(err)
	}
	return cl, nil
}

// span checks an I/O of n bytes at off against the export.
func (c *Client) span(off int64, n int64) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("nbd: offset %d, length %d: %w", off, n, ErrOutOfRange)
	}
	mb := int64(c.info.MinBlock)
	if off%mb != 0 || n%mb != 0 {
		return fmt.Errorf("nbd: offset %d, length %d, minimum block %d: %w", off, n, mb, ErrUnaligned)
	}
	if uint64(off) > c.info.Size || uint64(n) > c.info.Size-uint64(off) {
		return fmt.Errorf("nbd: offset %d, length %d, size %d: %w", off, n, c.info.Size, ErrOutOfRange)
	}
	return nil
}

// transfer sends p at off as requests of at most c.chunk bytes, all in
// flight together, and returns the bytes done before the first failure.
func (c *Client) transfer(typ, flags uint16, p []byte, off int64) (int, error) {
	var calls []*call
	var subErr error
	for done := 0; done < len(p); {
		n := min(len(p)-done, int(c.chunk))
		seg := p[done : done+n]
		var cl *call
		if typ == cmdRead {
			cl, subErr = c.submit(typ, flags, uint64(off)+uint64(done), uint32(n), nil, seg)
		} else {
			cl, subErr = c.submit(typ, flags, uint64(off)+uint64(done), uint32(n), seg, nil)
		}
		if subErr != nil {
			break
		}
		calls = append(calls, cl)
		done += n
	}
	good, firstErr := 0, error(nil)
	for i, cl := range calls {
		if err := <-cl.done; err != nil && firstErr == nil {
			firstErr = err
			good = i * int(c.chunk)
		}
	}
	if firstErr == nil && subErr != nil {
		firstErr, good = subErr, len(calls)*int(c.chunk)
	}
	if firstErr != nil {
		return good, fmt.Errorf("nbd: offset %d: %w", off+int64(good), firstErr)
	}
	return len(p), nil
}

// ReadAt reads len(p) bytes at off (io.ReaderAt): off and len(p) must be
// multiples of MinBlock. A read reaching past the end reads up to it and
// returns io.EOF.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off >= 0 && uint64(off) >= c.info.Size && len(p) > 0 {
		return 0, io.EOF
	}
	n := len(p)
	if off >= 0 && uint64(off) < c.info.Size && uint64(n) > c.info.Size-uint64(off) {
		n = int(c.info.Size - uint64(off))
	}
	if err := c.span(off, int64(n)); err != nil {
		return 0, err
	}
	got, err := c.transfer(cmdRead, 0, p[:n], off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return got, err
}

// WriteAt writes p at off (io.WriterAt): off and len(p) must be multiples
// of MinBlock, and the range within the export. The data may not be
// durable until Flush.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if err := c.span(off, int64(len(p))); err != nil {
		return 0, err
	}
	return c.transfer(cmdWrite, 0, p, off)
}

// WriteAtFUA is WriteAt whose data is durable when it returns: NBD_CMD_
// FLAG_FUA when the server offers it, else a Flush after the write.
func (c *Client) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := c.span(off, int64(len(p))); err != nil {
		return 0, err
	}
	if c.info.CanFUA {
		return c.transfer(cmdWrite, cmdFlagFUA, p, off)
	}
	n, err := c.transfer(cmdWrite, 0, p, off)
	if err == nil {
		err = c.Flush()
	}
	return n, err
}

// Flush makes every write completed so far durable.
func (c *Client) Flush() error {
	if !c.info.CanFlush {
		return fmt.Errorf("nbd: flush: %w", ErrNotSupported)
	}
	cl, err := c.submit(cmdFlush, 0, 0, 0, nil, nil)
	if err != nil {
		return fmt.Errorf("nbd: flush: %w", err)
	}
	if err := <-cl.done; err != nil {
		return fmt.Errorf("nbd: flush: %w", err)
	}
	return nil
}

// Trim tells the server n bytes at off are no longer needed; they read as
// anything until written again.
func (c *Client) Trim(off, n int64) error {
	if !c.info.CanTrim {
		return fmt.Errorf("nbd: trim: %w", ErrNotSupported)
	}
	return c.zeroRange(cmdTrim, 0, off, n)
}

// WriteZeroes makes n bytes at off read as zeroes.
func (c *Client) WriteZeroes(off, n int64) error {
	if !c.info.CanWriteZeroes {
		return fmt.Errorf("nbd: write zeroes: %w", ErrNotSupported)
	}
	return c.zeroRange(cmdWriteZeroes, 0, off, n)
}

// zeroRange sends a trim or write-zeroes of any length as requests of at
// most zeroChunk bytes, in flight together.
func (c *Client) zeroRange(typ, flags uint16, off, n int64) error {
	if err := c.span(off, n); err != nil {
		return err
	}
	var calls []*call
	var firstErr error
	for done := int64(0); done < n; {
		k := min(n-done, zeroChunk)
		cl, err := c.submit(typ, flags, uint64(off+done), uint32(k), nil, nil)
		if err != nil {
			firstErr = err
			break
		}
		calls = append(calls, cl)
		done += k
	}
	for _, cl := range calls {
		if err := <-cl.done; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return fmt.Errorf("nbd: offset %d, length %d: %w", off, n, firstErr)
	}
	return nil
}

// Close waits for the calls in flight, sends NBD_CMD_DISC and closes the
// connection. Later calls get ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		<-c.recvDone
		return nil
	}
	c.closing = true
	c.mu.Unlock()
	c.active.Wait()
	c.mu.Lock()
	failed := c.err != nil
	c.mu.Unlock()
	var err error
	if !failed {
		c.sendMu.Lock()
		_, err = c.nc.Write(request{typ: cmdDisc}.appendTo(nil))
		c.sendMu.Unlock()
	}
	c.nc.Close()
	<-c.recvDone
	if err != nil {
		return fmt.Errorf("nbd: disconnect: %w", err)
	}
	return nil
}
