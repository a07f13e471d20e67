package nbd

import (
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"

	"github.com/sirupsen/logrus"
)

// session is the server's side of the transmission phase of one
// connection ("Transmission", "Request types"): one goroutine reads
// requests and hands each to a goroutine of its own, up to maxInFlight at
// once; replies go out as requests complete, in any order, matched by
// handle.
type session struct {
	ex     *served
	size   uint64 // of the export, as the client was told
	r      io.Reader
	log    *logrus.Entry
	hangup func() // closes the connection, so that the reader stops

	slots  chan struct{} // one per request being served
	budget byteBudget    // bytes of data buffers held
	wg     sync.WaitGroup

	wmu  sync.Mutex // guards w and werr: one reply's bytes go out together
	w    io.Writer
	werr error // the first failed reply write; nothing is written after it
}

func newSession(ex *served, size uint64, rw io.ReadWriter, maxInFlight int, lg *logrus.Entry, hangup func()) *session {
	return &session{
		ex: ex, size: size, r: rw, w: rw, log: lg, hangup: hangup,
		slots:  make(chan struct{}, maxInFlight),
		budget: byteBudget{limit: maxInFlightBytes},
	}
}

// run reads and dispatches requests until NBD_CMD_DISC (nil), the
// connection's end or a protocol violation, then waits for the requests
// in flight to be replied to.
func (s *session) run() error {
	err := s.readLoop()
	s.wg.Wait()
	return err
}

func (s *session) readLoop() error {
	hdr := make([]byte, requestSize)
	for {
		if _, err := io.ReadFull(s.r, hdr); err != nil {
			return err
		}
		req, err := parseRequest(hdr)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if req.typ == cmdDisc {
			return nil
		}
		// A write's data must be read to find the next request: more
		// than a maximal payload is not read, the server hangs up.
		if req.typ == cmdWrite && req.length > defaultMaxPayload {
			return fmt.Errorf("%w: write of %d bytes, more than %d", ErrProtocol, req.length, defaultMaxPayload)
		}
		// A request refused is answered from here, before any buffer is
		// taken for it: a refused write's data is skipped.
		if errno := s.check(req); errno != 0 {
			if req.typ == cmdWrite {
				if _, err := io.CopyN(io.Discard, s.r, int64(req.length)); err != nil {
					return err
				}
			}
			s.reply(req.handle, errno, nil)
			continue
		}
		var buf []byte
		switch req.typ {
		case cmdWrite:
			buf = s.getBuffer(req.length)
			if _, err := io.ReadFull(s.r, buf); err != nil {
				s.putBuffer(buf)
				return err
			}
		case cmdRead:
			buf = s.getBuffer(req.length)
		}
		s.slots <- struct{}{}
		s.wg.Add(1)
		go func() {
			defer func() {
				s.putBuffer(buf)
				<-s.slots
				s.wg.Done()
			}()
			errno := s.do(req, buf)
			var data []byte
			if req.typ == cmdRead && errno == 0 {
				data = buf
			}
			s.reply(req.handle, errno, data)
		}()
	}
}

// allowedFlags are the command flags each request takes: FUA on every one
// ("the server MUST accept all commands with this bit set"), NO_HOLE on
// write zeroes. Anything else, and any other request type, is EINVAL.
func allowedFlags(typ uint16) (uint16, bool) {
	switch typ {
	case cmdRead, cmdWrite, cmdFlush, cmdTrim:
		return cmdFlagFUA, true
	case cmdWriteZeroes:
		return cmdFlagFUA | cmdFlagNoHole, true
	}
	return 0, false
}

func writes(typ uint16) bool {
	return typ == cmdWrite || typ == cmdTrim || typ == cmdWriteZeroes
}

// check validates a request against the export before it touches it: its
// type and flags, read-only, the range (ENOSPC for writes past the end as
// the spec asks, EINVAL otherwise) and alignment to the sector size, the
// minimum block size the server advertised. Unaligned reads, writes and
// write-zeroes are refused with EINVAL rather than served by a
// read-modify-write, which two overlapping requests in flight would race
// on; a trim is a hint and is narrowed to the whole sectors it covers.
func (s *session) check(req request) uint32 {
	allowed, known := allowedFlags(req.typ)
	if !known || req.flags&^allowed != 0 {
		return errnoInval
	}
	if req.typ == cmdFlush {
		if req.offset != 0 || req.length != 0 {
			return errnoInval
		}
		return 0
	}
	if req.typ == cmdRead && req.length > defaultMaxPayload {
		return errnoInval
	}
	if writes(req.typ) && s.ex.readOnly {
		return errnoPerm
	}
	if uint64(req.length) > s.size || req.offset > s.size-uint64(req.length) {
		if req.typ == cmdWrite || req.typ == cmdWriteZeroes {
			return errnoNoSpace
		}
		return errnoInval
	}
	ss := uint64(s.ex.sector)
	if req.typ != cmdTrim && (req.offset%ss != 0 || uint64(req.length)%ss != 0) {
		return errnoInval
	}
	return 0
}

// do serves a checked request; a zero-length one does nothing and
// succeeds. FUA is a Flush after the write.
func (s *session) do(req request, buf []byte) uint32 {
	ss := uint64(s.ex.sector)
	lba, n := req.offset/ss, uint64(req.length)/ss
	var err error
	switch req.typ {
	case cmdRead:
		if n > 0 {
			err = s.ex.dev.ReadV(lba, [][]byte{buf})
		}
	case cmdWrite:
		if n > 0 {
			err = s.ex.dev.WriteV(lba, [][]byte{buf})
		}
	case cmdWriteZeroes:
		if n > 0 {
			err = s.ex.dev.WriteZeroes(lba, n)
		}
	case cmdTrim:
		// The whole sectors inside the range: the spec lets a server
		// round the offset up and the length down.
		first := (req.offset + ss - 1) / ss
		end := (req.offset + uint64(req.length)) / ss
		if end > first {
			err = s.ex.dev.WriteZeroes(first, end-first)
		}
	case cmdFlush:
		err = s.ex.dev.Flush()
	}
	if err == nil && req.flags&cmdFlagFUA != 0 && writes(req.typ) {
		err = s.ex.dev.Flush()
	}
	if err != nil {
		errno := errnoOf(err)
		s.log.WithError(err).WithField("offset", req.offset).WithField("length", req.length).
			WithField("errno", errno).Warnf("nbd: request type %d failed", req.typ)
		return errno
	}
	return 0
}

// reply sends a simple reply and, for a successful read, its data. A
// failed write hangs up: the client cannot tell where the next reply
// begins.
func (s *session) reply(handle uint64, errno uint32, data []byte) {
	hdr := simpleReply{errno: errno, handle: handle}.appendTo(make([]byte, 0, simpleReplySize))
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil {
		return
	}
	bufs := net.Buffers{hdr}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	if _, err := bufs.WriteTo(s.w); err != nil {
		s.werr = err
		s.hangup()
	}
}

func (s *session) getBuffer(n uint32) []byte {
	if n == 0 {
		return nil
	}
	s.budget.acquire(int64(n))
	return getPooled(int(n))
}

func (s *session) putBuffer(b []byte) {
	if b == nil {
		return
	}
	s.budget.release(int64(len(b)))
	putPooled(b)
}

// byteBudget bounds the bytes a connection's requests hold: acquire waits
// until the request fits. No request is larger than the limit.
type byteBudget struct {
	limit int64
	mu    sync.Mutex // guards used and cond's waits
	cond  *sync.Cond
	used  int64
}

func (b *byteBudget) acquire(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cond == nil {
		b.cond = sync.NewCond(&b.mu)
	}
	for b.used > 0 && b.used+n > b.limit {
		b.cond.Wait()
	}
	b.used += n
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.cond != nil {
		b.cond.Broadcast()
	}
}

// Data buffers are pooled by power-of-two size class, from 4 KiB to the
// maximal payload: a migration pushes a disk in requests of one size, and
// a fresh 32 MiB buffer per request would be garbage at the same rate.
const (
	minPoolShift = 12
	maxPoolShift = 25 // defaultMaxPayload
)

var pools [maxPoolShift - minPoolShift + 1]sync.Pool

func poolClass(n int) int {
	shift := max(bits.Len(uint(n-1)), minPoolShift)
	return shift - minPoolShift
}

func getPooled(n int) []byte {
	c := poolClass(n)
	if p, ok := pools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(c+minPoolShift))
}

func putPooled(b []byte) {
	c := poolClass(cap(b))
	if cap(b) != 1<<(c+minPoolShift) {
		return
	}
	b = b[:cap(b)]
	pools[c].Put(&b)
}
