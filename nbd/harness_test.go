package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// memExport is an in-memory Export that counts what happens to it.
type memExport struct {
	sector   uint32
	readOnly bool
	// gate, when set, is called before every I/O outside mu and may block
	// it: tests hold requests in flight with it.
	gate func(op string, lba uint64)

	mu       sync.Mutex // guards the fields below
	data     []byte
	flushes  int
	failWith error // every I/O fails with it when set
	inFlight int
	peak     int // the most I/Os at once
	ops      []string
}

func newMemExport(sector uint32, sectors int) *memExport {
	e := &memExport{sector: sector, data: make([]byte, int(sector)*sectors)}
	for i := range e.data {
		e.data[i] = byte(i*7 + i/4096)
	}
	return e
}

func (e *memExport) SectorSize() uint32 { return e.sector }
func (e *memExport) NumSectors() uint64 { return uint64(len(e.data)) / uint64(e.sector) }
func (e *memExport) ReadOnly() bool     { return e.readOnly }

func (e *memExport) begin(op string, lba uint64) error {
	e.mu.Lock()
	e.inFlight++
	e.peak = max(e.peak, e.inFlight)
	e.ops = append(e.ops, fmt.Sprintf("%s %d", op, lba))
	err := e.failWith
	e.mu.Unlock()
	if e.gate != nil {
		e.gate(op, lba)
	}
	return err
}

func (e *memExport) end() {
	e.mu.Lock()
	e.inFlight--
	e.mu.Unlock()
}

func (e *memExport) span(lba uint64, n int) (int, error) {
	off := lba * uint64(e.sector)
	if n%int(e.sector) != 0 || off > uint64(len(e.data)) || uint64(n) > uint64(len(e.data))-off {
		return 0, fmt.Errorf("memExport: %d bytes at LBA %d out of range", n, lba)
	}
	return int(off), nil
}

func iovLen(iov [][]byte) int {
	n := 0
	for _, b := range iov {
		n += len(b)
	}
	return n
}

func (e *memExport) ReadV(lba uint64, iov [][]byte) error {
	if err := e.begin("read", lba); err != nil {
		e.end()
		return err
	}
	defer e.end()
	e.mu.Lock()
	defer e.mu.Unlock()
	off, err := e.span(lba, iovLen(iov))
	if err != nil {
		return err
	}
	for _, b := range iov {
		off += copy(b, e.data[off:])
	}
	return nil
}

func (e *memExport) WriteV(lba uint64, iov [][]byte) error {
	if err := e.begin("write", lba); err != nil {
		e.end()
		return err
	}
	defer e.end()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.readOnly {
		return errors.New("memExport: read-only")
	}
	off, err := e.span(lba, iovLen(iov))
	if err != nil {
		return err
	}
	for _, b := range iov {
		off += copy(e.data[off:], b)
	}
	return nil
}

func (e *memExport) WriteZeroes(lba, n uint64) error {
	if err := e.begin("zero", lba); err != nil {
		e.end()
		return err
	}
	defer e.end()
	e.mu.Lock()
	defer e.mu.Unlock()
	off, err := e.span(lba, int(n)*int(e.sector))
	if err != nil {
		return err
	}
	clear(e.data[off : off+int(n)*int(e.sector)])
	return nil
}

func (e *memExport) Flush() error {
	if err := e.begin("flush", 0); err != nil {
		e.end()
		return err
	}
	defer e.end()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.flushes++
	return nil
}

func (e *memExport) snapshot() []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return bytes.Clone(e.data)
}

func (e *memExport) counts() (flushes, peak int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.flushes, e.peak
}

// quietLogger keeps the server's logs out of the test output.
func quietLogger() *logrus.Logger {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	return lg
}

// startServer serves exports on a unix socket in a temp dir and returns
// the socket's path; the server is closed when the test ends, and Serve
// must then return ErrServerClosed.
func startServer(t testing.TB, opts ServerOptions, exports map[string]Export) (*Server, string) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	srv := NewServer(opts)
	for name, e := range exports {
		if err := srv.AddExport(name, e, ExportOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return srv, sock
}

// raw is a hand-driven client connection, for the protocol's cases that
// no well-behaved client would send.
type raw struct {
	t  *testing.T
	nc net.Conn
}

func dialRaw(t *testing.T, sock string) *raw {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &raw{t: t, nc: nc}
}

func (r *raw) send(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

func (r *raw) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.nc, b); err != nil {
		r.t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

// greet reads the greeting and sends the client flags.
func (r *raw) greet(flags uint32) {
	r.t.Helper()
	g, err := parseGreeting(r.read(greetingSize))
	if err != nil {
		r.t.Fatal(err)
	}
	if g.flags != flagFixedNewstyle|flagNoZeroes {
		r.t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", g.flags)
	}
	r.send(be.AppendUint32(nil, flags))
}

func optionBytes(opt uint32, data []byte) []byte {
	return append(optionHeader{option: opt, length: uint32(len(data))}.appendTo(nil), data...)
}

func (r *raw) optionReply() (optionReplyHeader, []byte) {
	r.t.Helper()
	h, err := parseOptionReplyHeader(r.read(optionReplyHeaderSize))
	if err != nil {
		r.t.Fatal(err)
	}
	if h.length > maxOptionReplyData {
		r.t.Fatalf("option reply of %d bytes", h.length)
	}
	return h, r.read(int(h.length))
}

// goTo negotiates name with NBD_OPT_GO and returns the size and flags.
func (r *raw) goTo(name string) (uint64, uint16) {
	r.t.Helper()
	r.greet(clientFixedNewstyle | clientNoZeroes)
	r.send(optionBytes(optGo, infoRequest{name: name, infos: []uint16{infoBlockSize}}.appendTo(nil)))
	var size uint64
	var flags uint16
	for {
		h, data := r.optionReply()
		switch h.replyType {
		case repInfo:
			if be.Uint16(data) == infoExport {
				p, err := parseInfoExport(data)
				if err != nil {
					r.t.Fatal(err)
				}
				size, flags = p.size, p.flags
			}
		case repAck:
			return size, flags
		default:
			r.t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, h.replyType, data)
		}
	}
}

func (r *raw) reply() simpleReply {
	r.t.Helper()
	rep, err := parseSimpleReply(r.read(simpleReplySize))
	if err != nil {
		r.t.Fatal(err)
	}
	return rep
}

// closed expects the server to hang up with nothing more to say.
func (r *raw) closed() {
	r.t.Helper()
	b := make([]byte, 1)
	n, err := r.nc.Read(b)
	if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		r.t.Fatalf("read %d bytes (%x), %v: want the server to hang up", n, b[:n], err)
	}
}
