package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/fdcheck"
)

// TestExportNameGetsSizeFlagsAndZeroesUnlessNoZeroes: the old way into
// transmission answers with 10 bytes, plus 124 zeroes for a client that
// did not set NBD_FLAG_C_NO_ZEROES.
func TestExportNameGetsSizeFlagsAndZeroesUnlessNoZeroes(t *testing.T) {
	fdcheck.Check(t)
	for _, tc := range []struct {
		name  string
		flags uint32
		zeros int
	}{
		{"no zeroes", clientFixedNewstyle | clientNoZeroes, 0},
		{"with zeroes", clientFixedNewstyle, exportNameZeroes},
		{"plain newstyle client", 0, exportNameZeroes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, sock := startServer(t, ServerOptions{}, testExports())
			r := dialRaw(t, sock)
			r.greet(tc.flags)
			r.send(optionBytes(optExportName, []byte("disk")))
			b := r.read(exportNameReplySize + tc.zeros)
			rep, err := parseExportNameReply(b[:exportNameReplySize])
			if err != nil {
				t.Fatal(err)
			}
			if rep.size != testSectors*512 || rep.flags != writableFlags {
				t.Fatalf("size %d flags %#x, want %d %#x", rep.size, rep.flags, testSectors*512, writableFlags)
			}
			if !bytes.Equal(b[exportNameReplySize:], make([]byte, tc.zeros)) {
				t.Fatalf("reserved bytes %x, want zeroes", b[exportNameReplySize:])
			}
			// The next bytes are the reply to a request, not more padding.
			r.send(request{typ: cmdFlush, handle: 9}.appendTo(nil))
			if rep := r.reply(); rep.errno != 0 || rep.handle != 9 {
				t.Fatalf("flush reply %+v", rep)
			}
		})
	}
}

// TestRequests sends each request to a fresh connection of the writable
// "disk" or the read-only "ro" and checks the reply's error value; for
// "open" cases a read then shows the stream is still in step (a refused
// write's data was consumed), "closed" ones expect the server to hang up.
func TestRequests(t *testing.T) {
	fdcheck.Check(t)
	const size = testSectors * 512
	sector := bytes.Repeat([]byte{0x5a}, 512)
	for _, tc := range []struct {
		name   string
		export string
		req    request
		data   []byte
		errno  uint32
		then   string
	}{
		{"read of the first sector", "disk", request{typ: cmdRead, length: 512}, nil, 0, "open"},
		{"read ending at the last byte", "disk", request{typ: cmdRead, offset: size - 1024, length: 1024}, nil, 0, "open"},
		{"read past the end is EINVAL", "disk", request{typ: cmdRead, offset: size - 512, length: 1024}, nil, errnoInval, "open"},
		{"read whose offset plus length wraps around is EINVAL", "disk",
			request{typ: cmdRead, offset: 1<<64 - 512, length: 1024}, nil, errnoInval, "open"},
		{"zero-length read at the end succeeds", "disk", request{typ: cmdRead, offset: size}, nil, 0, "open"},
		{"zero-length read past the end is EINVAL", "disk", request{typ: cmdRead, offset: size + 512}, nil, errnoInval, "open"},
		{"zero-length write succeeds", "disk", request{typ: cmdWrite, offset: 512}, nil, 0, "open"},
		{"read at an unaligned offset is EINVAL", "disk", request{typ: cmdRead, offset: 1, length: 512}, nil, errnoInval, "open"},
		{"read of part of a sector is EINVAL", "disk", request{typ: cmdRead, length: 100}, nil, errnoInval, "open"},
		{"write of part of a sector is EINVAL, its data consumed", "disk",
			request{typ: cmdWrite, length: 100}, make([]byte, 100), errnoInval, "open"},
		{"write past the end is ENOSPC, its data consumed", "disk",
			request{typ: cmdWrite, offset: size, length: 512}, sector, errnoNoSpace, "open"},
		{"write whose offset plus length wraps around is ENOSPC", "disk",
			request{typ: cmdWrite, offset: 1<<64 - 256, length: 512}, sector, errnoNoSpace, "open"},
		{"write zeroes past the end is ENOSPC", "disk", request{typ: cmdWriteZeroes, offset: size - 512, length: 1024}, nil, errnoNoSpace, "open"},
		{"trim past the end is EINVAL", "disk", request{typ: cmdTrim, offset: size, length: 512}, nil, errnoInval, "open"},
		{"write zeroes of part of a sector is EINVAL", "disk", request{typ: cmdWriteZeroes, length: 100}, nil, errnoInval, "open"},
		{"write to the read-only export is EPERM, its data consumed", "ro",
			request{typ: cmdWrite, length: 512}, sector, errnoPerm, "open"},
		{"trim of the read-only export is EPERM", "ro", request{typ: cmdTrim, length: 512}, nil, errnoPerm, "open"},
		{"write zeroes to the read-only export is EPERM", "ro", request{typ: cmdWriteZeroes, length: 512}, nil, errnoPerm, "open"},
		{"read of the read-only export succeeds", "ro", request{typ: cmdRead, length: 4096}, nil, 0, "open"},
		{"flush of the read-only export succeeds", "ro", request{typ: cmdFlush}, nil, 0, "open"},
		{"an unknown command is EINVAL", "disk", request{typ: 99, length: 512}, nil, errnoInval, "open"},
		{"NBD_CMD_CACHE, not offered, is EINVAL", "disk", request{typ: cmdCache, length: 512}, nil, errnoInval, "open"},
		{"NBD_CMD_BLOCK_STATUS without contexts is EINVAL", "disk", request{typ: cmdBlockStatus, length: 512}, nil, errnoInval, "open"},
		{"an unknown command flag is EINVAL", "disk", request{typ: cmdRead, flags: 1 << 9, length: 512}, nil, errnoInval, "open"},
		{"DF on a read, never offered, is EINVAL", "disk", request{typ: cmdRead, flags: cmdFlagDF, length: 512}, nil, errnoInval, "open"},
		{"NO_HOLE on a write is EINVAL, its data consumed", "disk",
			request{typ: cmdWrite, flags: cmdFlagNoHole, length: 512}, sector, errnoInval, "open"},
		{"FAST_ZERO on write zeroes, never offered, is EINVAL", "disk",
			request{typ: cmdWriteZeroes, flags: cmdFlagFastZero, length: 512}, nil, errnoInval, "open"},
		{"NO_HOLE on write zeroes succeeds", "disk", request{typ: cmdWriteZeroes, flags: cmdFlagNoHole, length: 512}, nil, 0, "open"},
		{"FUA on a read is accepted", "disk", request{typ: cmdRead, flags: cmdFlagFUA, length: 512}, nil, 0, "open"},
		{"FUA on a write succeeds", "disk", request{typ: cmdWrite, flags: cmdFlagFUA, length: 512}, sector, 0, "open"},
		{"flush succeeds", "disk", request{typ: cmdFlush}, nil, 0, "open"},
		{"flush with an offset is EINVAL", "disk", request{typ: cmdFlush, offset: 512}, nil, errnoInval, "open"},
		{"flush with a length is EINVAL", "disk", request{typ: cmdFlush, length: 512}, nil, errnoInval, "open"},
		{"read larger than the maximum payload is EINVAL", "disk",
			request{typ: cmdRead, length: defaultMaxPayload + 512}, nil, errnoInval, "open"},
		{"read of 4 GiB is EINVAL", "disk", request{typ: cmdRead, length: 0xffffffff}, nil, errnoInval, "open"},
		{"trim larger than the maximum payload but within the export is served", "disk",
			request{typ: cmdTrim, length: size}, nil, 0, "open"},
		{"write larger than the maximum payload hangs up", "disk",
			request{typ: cmdWrite, length: defaultMaxPayload + 512}, nil, 0, "closed"},
		{"write of 4 GiB hangs up", "disk", request{typ: cmdWrite, length: 0xffffffff}, nil, 0, "closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exports := testExports()
			_, sock := startServer(t, ServerOptions{}, exports)
			r := dialRaw(t, sock)
			r.goTo(tc.export)
			tc.req.handle = 0xfeed
			r.send(append(tc.req.appendTo(nil), tc.data...))
			if tc.then == "closed" {
				r.closed()
				return
			}
			rep := r.reply()
			if rep.handle != 0xfeed || rep.errno != tc.errno {
				t.Fatalf("reply handle %#x errno %d, want %#x errno %d", rep.handle, rep.errno, 0xfeed, tc.errno)
			}
			if tc.req.typ == cmdRead && rep.errno == 0 {
				want := exports[tc.export].(*memExport).snapshot()[tc.req.offset : tc.req.offset+uint64(tc.req.length)]
				if got := r.read(int(tc.req.length)); !bytes.Equal(got, want) {
					t.Fatalf("read data differs from the export's")
				}
			}
			r.send(request{typ: cmdRead, handle: 2, offset: 512, length: 512}.appendTo(nil))
			if rep := r.reply(); rep.handle != 2 || rep.errno != 0 {
				t.Fatalf("the next read got %+v: the stream is out of step", rep)
			}
			r.read(512)
		})
	}
}

// TestABadRequestMagicHangsUp: the server cannot find the next request in
// a stream that is not one.
func TestABadRequestMagicHangsUp(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{}, testExports())
	r := dialRaw(t, sock)
	r.goTo("disk")
	b := request{typ: cmdRead, length: 512}.appendTo(nil)
	b[0] ^= 0xff
	r.send(b)
	r.closed()
}

// TestGarbageAfterTheHandshakeHangsUpAndTheServerServesOn: random bytes
// where requests belong end that connection only.
func TestGarbageAfterTheHandshakeHangsUpAndTheServerServesOn(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{}, testExports())
	r := dialRaw(t, sock)
	r.goTo("disk")
	r.send([]byte("GET / HTTP/1.1\r\nHost: nbd\r\n\r\n"))
	r.closed()
	r2 := dialRaw(t, sock)
	r2.goTo("disk")
	r2.send(request{typ: cmdFlush, handle: 1}.appendTo(nil))
	if rep := r2.reply(); rep.errno != 0 {
		t.Fatalf("flush on a second connection: %+v", rep)
	}
}

// TestWritesReachTheExportAndReadBack: a write's data lands at its
// offset, nothing around it changes, and a read returns it.
func TestWritesReachTheExportAndReadBack(t *testing.T) {
	fdcheck.Check(t)
	exports := testExports()
	disk := exports["disk"].(*memExport)
	before := disk.snapshot()
	_, sock := startServer(t, ServerOptions{}, exports)
	r := dialRaw(t, sock)
	r.goTo("disk")
	data := bytes.Repeat([]byte("nvblk-nbd"), 1024)[:2048]
	r.send(append(request{typ: cmdWrite, handle: 1, offset: 1024, length: 2048}.appendTo(nil), data...))
	if rep := r.reply(); rep.errno != 0 {
		t.Fatalf("write: %+v", rep)
	}
	want := bytes.Clone(before)
	copy(want[1024:], data)
	if !bytes.Equal(disk.snapshot(), want) {
		t.Fatal("export after the write differs from the write applied to it")
	}
	r.send(request{typ: cmdRead, handle: 2, offset: 1024, length: 2048}.appendTo(nil))
	if rep := r.reply(); rep.errno != 0 {
		t.Fatalf("read: %+v", rep)
	}
	if got := r.read(2048); !bytes.Equal(got, data) {
		t.Fatal("read back differs from what was written")
	}
}

// TestTrimNarrowsAnUnalignedRangeToTheSectorsItCovers: bytes 100..1200
// cover sector 1 (512..1024) only; sectors 0 and 2 keep their data.
func TestTrimNarrowsAnUnalignedRangeToTheSectorsItCovers(t *testing.T) {
	fdcheck.Check(t)
	exports := testExports()
	disk := exports["disk"].(*memExport)
	before := disk.snapshot()
	_, sock := startServer(t, ServerOptions{}, exports)
	r := dialRaw(t, sock)
	r.goTo("disk")
	r.send(request{typ: cmdTrim, handle: 1, offset: 100, length: 1100}.appendTo(nil))
	if rep := r.reply(); rep.errno != 0 {
		t.Fatalf("trim: %+v", rep)
	}
	want := bytes.Clone(before)
	clear(want[512:1024])
	if !bytes.Equal(disk.snapshot(), want) {
		t.Fatal("trim changed other bytes than sector 1's")
	}
	// Within one sector: nothing to discard, and a success.
	r.send(request{typ: cmdTrim, handle: 2, offset: 2100, length: 300}.appendTo(nil))
	if rep := r.reply(); rep.errno != 0 {
		t.Fatalf("trim inside a sector: %+v", rep)
	}
	if !bytes.Equal(disk.snapshot(), want) {
		t.Fatal("a trim inside one sector changed the export")
	}
}

// TestWriteZeroesZeroesTheRange.
func TestWriteZeroesZeroesTheRange(t *testing.T) {
	fdcheck.Check(t)
	exports := testExports()
	disk := exports["disk"].(*memExport)
	before := disk.snapshot()
	_, sock := startServer(t, ServerOptions{}, exports)
	r := dialRaw(t, sock)
	r.goTo("disk")
	r.send(request{typ: cmdWriteZeroes, handle: 1, offset: 4096, length: 8192}.appendTo(nil))
	if rep := r.reply(); rep.errno != 0 {
		t.Fatalf("write zeroes: %+v", rep)
	}
	want := bytes.Clone(before)
	clear(want[4096 : 4096+8192])
	if !bytes.Equal(disk.snapshot(), want) {
		t.Fatal("export after write zeroes differs")
	}
}

// TestFUAFlushesBeforeTheReply: a write with NBD_CMD_FLAG_FUA is not
// answered until the export has flushed; one without does not flush.
func TestFUAFlushesBeforeTheReply(t *testing.T) {
	fdcheck.Check(t)
	for _, tc := range []struct {
		name    string
		req     request
		data    []byte
		flushes int
	}{
		{"write without FUA", request{typ: cmdWrite, length: 512}, make([]byte, 512), 0},
		{"write with FUA", request{typ: cmdWrite, flags: cmdFlagFUA, length: 512}, make([]byte, 512), 1},
		{"write zeroes with FUA", request{typ: cmdWriteZeroes, flags: cmdFlagFUA, length: 512}, nil, 1},
		{"trim with FUA", request{typ: cmdTrim, flags: cmdFlagFUA, length: 512}, nil, 1},
		{"read with FUA", request{typ: cmdRead, flags: cmdFlagFUA, length: 512}, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exports := testExports()
			disk := exports["disk"].(*memExport)
			_, sock := startServer(t, ServerOptions{}, exports)
			r := dialRaw(t, sock)
			r.goTo("disk")
			r.send(append(tc.req.appendTo(nil), tc.data...))
			if rep := r.reply(); rep.errno != 0 {
				t.Fatalf("reply %+v", rep)
			}
			if f, _ := disk.counts(); f != tc.flushes {
				t.Fatalf("%d flushes when the reply came, want %d", f, tc.flushes)
			}
		})
	}
}

// TestExportErrorsReachTheClientAsErrno: ENOSPC and its kin, EPERM and its
// kin and EINVAL keep their meaning; anything else is EIO.
func TestExportErrorsReachTheClientAsErrno(t *testing.T) {
	fdcheck.Check(t)
	for _, tc := range []struct {
		err   error
		errno uint32
	}{
		{errors.New("media error"), errnoIO},
		{fmt.Errorf("pwrite: %w", syscall.ENOSPC), errnoNoSpace},
		{fmt.Errorf("pwrite: %w", syscall.EDQUOT), errnoNoSpace},
		{fmt.Errorf("pwrite: %w", syscall.EFBIG), errnoNoSpace},
		{fmt.Errorf("open: %w", syscall.EROFS), errnoPerm},
		{fmt.Errorf("open: %w", syscall.EPERM), errnoPerm},
		{fmt.Errorf("bad: %w", syscall.EINVAL), errnoInval},
		{fmt.Errorf("gone: %w", syscall.ENOMEM), errnoIO},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			exports := testExports()
			disk := exports["disk"].(*memExport)
			disk.failWith = tc.err
			_, sock := startServer(t, ServerOptions{}, exports)
			r := dialRaw(t, sock)
			r.goTo("disk")
			for i, req := range []request{{typ: cmdRead, length: 512}, {typ: cmdWrite, length: 512}, {typ: cmdFlush}} {
				req.handle = uint64(i)
				var data []byte
				if req.typ == cmdWrite {
					data = make([]byte, 512)
				}
				r.send(append(req.appendTo(nil), data...))
				// A failed read sends no data: the next bytes are a reply.
				if rep := r.reply(); rep.errno != tc.errno || rep.handle != uint64(i) {
					t.Fatalf("request type %d: reply %+v, want errno %d", req.typ, rep, tc.errno)
				}
			}
		})
	}
}

// gatedExport holds reads in its gate until released, and counts them.
type gate struct {
	mu      sync.Mutex // guards waiting
	waiting map[uint64]chan struct{}
	arrived chan uint64
}

func newGate() *gate {
	return &gate{waiting: map[uint64]chan struct{}{}, arrived: make(chan uint64, 64)}
}

func (g *gate) ch(lba uint64) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.waiting[lba]
	if !ok {
		c = make(chan struct{})
		g.waiting[lba] = c
	}
	return c
}

// hold is a memExport gate: reads wait until release(lba).
func (g *gate) hold(op string, lba uint64) {
	if op != "read" {
		return
	}
	g.arrived <- lba
	<-g.ch(lba)
}

func (g *gate) release(lba uint64) { close(g.ch(lba)) }

// TestRepliesGoOutAsRequestsCompleteMatchedByHandle: a read held in the
// export does not hold up the reply to a later one.
func TestRepliesGoOutAsRequestsCompleteMatchedByHandle(t *testing.T) {
	fdcheck.Check(t)
	g := newGate()
	disk := newMemExport(512, testSectors)
	disk.gate = g.hold
	_, sock := startServer(t, ServerOptions{}, map[string]Export{"disk": disk})
	r := dialRaw(t, sock)
	r.goTo("disk")
	r.send(request{typ: cmdRead, handle: 100, offset: 0, length: 512}.appendTo(nil))
	r.send(request{typ: cmdRead, handle: 200, offset: 512, length: 512}.appendTo(nil))
	<-g.arrived
	<-g.arrived
	g.release(1)
	if rep := r.reply(); rep.handle != 200 {
		t.Fatalf("first reply for handle %d, want 200 (the read not held)", rep.handle)
	}
	want := disk.snapshot()
	if got := r.read(512); !bytes.Equal(got, want[512:1024]) {
		t.Fatal("handle 200's data is not sector 1's")
	}
	g.release(0)
	if rep := r.reply(); rep.handle != 100 {
		t.Fatalf("second reply for handle %d, want 100", rep.handle)
	}
	if got := r.read(512); !bytes.Equal(got, want[:512]) {
		t.Fatal("handle 100's data is not sector 0's")
	}
}

// TestRequestsInFlightAreBoundedByMaxInFlight: with every read held, the
// server starts MaxInFlight of them and reads no further until one ends.
func TestRequestsInFlightAreBoundedByMaxInFlight(t *testing.T) {
	fdcheck.Check(t)
	const maxInFlight, sent = 3, 10
	g := newGate()
	disk := newMemExport(512, testSectors)
	disk.gate = g.hold
	_, sock := startServer(t, ServerOptions{MaxInFlight: maxInFlight}, map[string]Export{"disk": disk})
	r := dialRaw(t, sock)
	r.goTo("disk")
	for i := range sent {
		r.send(request{typ: cmdRead, handle: uint64(i), offset: uint64(i) * 512, length: 512}.appendTo(nil))
	}
	for range maxInFlight {
		<-g.arrived
	}
	// A fourth read must wait for a slot: release one at a time and see
	// each let exactly one more in.
	for i := range sent {
		select {
		case lba := <-g.arrived:
			t.Fatalf("read of LBA %d started with %d in flight already", lba, maxInFlight)
		case <-time.After(20 * time.Millisecond):
		}
		g.release(uint64(i))
		r.reply()
		r.read(512)
		if i+maxInFlight < sent {
			<-g.arrived
		}
	}
	if _, peak := disk.counts(); peak != maxInFlight {
		t.Fatalf("peak of %d reads at once, want %d", peak, maxInFlight)
	}
}

// TestDisconnectAnswersTheRequestsInFlightFirst: NBD_CMD_DISC behind a
// held read: the read's reply still comes, then the server hangs up.
func TestDisconnectAnswersTheRequestsInFlightFirst(t *testing.T) {
	fdcheck.Check(t)
	g := newGate()
	disk := newMemExport(512, testSectors)
	disk.gate = g.hold
	_, sock := startServer(t, ServerOptions{}, map[string]Export{"disk": disk})
	r := dialRaw(t, sock)
	r.goTo("disk")
	r.send(request{typ: cmdRead, handle: 7, length: 512}.appendTo(nil))
	<-g.arrived
	r.send(request{typ: cmdDisc}.appendTo(nil))
	g.release(0)
	if rep := r.reply(); rep.handle != 7 || rep.errno != 0 {
		t.Fatalf("reply %+v", rep)
	}
	r.read(512)
	r.closed()
}

// TestCloseFinishesRequestsInFlightThenReturns: Close waits for a held
// read, whose reply still reaches the client, then hangs up and returns;
// Serve returns ErrServerClosed (startServer's cleanup checks it).
func TestCloseFinishesRequestsInFlightThenReturns(t *testing.T) {
	fdcheck.Check(t)
	g := newGate()
	disk := newMemExport(512, testSectors)
	disk.gate = g.hold
	srv, sock := startServer(t, ServerOptions{}, map[string]Export{"disk": disk})
	r := dialRaw(t, sock)
	r.goTo("disk")
	r.send(request{typ: cmdRead, handle: 7, length: 512}.appendTo(nil))
	<-g.arrived
	closed := make(chan error, 1)
	go func() { closed <- srv.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.release(0)
	if rep := r.reply(); rep.handle != 7 || rep.errno != 0 {
		t.Fatalf("reply %+v", rep)
	}
	r.read(512)
	r.closed()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("the listener still accepts after Close")
	}
}

// TestCloseEndsAHandshakeInProgress: a client that connected and said
// nothing does not hold Close up.
func TestCloseEndsAHandshakeInProgress(t *testing.T) {
	fdcheck.Check(t)
	srv, sock := startServer(t, ServerOptions{}, testExports())
	r := dialRaw(t, sock)
	r.read(greetingSize)
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	r.closed()
}

// TestASilentClientIsDroppedAfterTheHandshakeTimeout.
func TestASilentClientIsDroppedAfterTheHandshakeTimeout(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{HandshakeTimeout: 100 * time.Millisecond}, testExports())
	r := dialRaw(t, sock)
	r.greet(clientFixedNewstyle)
	r.closed()
}

// TestTheHandshakeTimeoutEndsWithTheHandshake: a client idle in
// transmission for longer is not dropped.
func TestTheHandshakeTimeoutEndsWithTheHandshake(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{HandshakeTimeout: 100 * time.Millisecond}, testExports())
	r := dialRaw(t, sock)
	r.goTo("disk")
	time.Sleep(300 * time.Millisecond)
	r.send(request{typ: cmdFlush, handle: 1}.appendTo(nil))
	if rep := r.reply(); rep.errno != 0 {
		t.Fatalf("flush after idling: %+v", rep)
	}
}

// TestAClientPastMaxConnectionsIsRefused: the second of a server with
// MaxConnections 1 is closed without a greeting; once the first leaves, a
// third is served.
func TestAClientPastMaxConnectionsIsRefused(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{MaxConnections: 1}, testExports())
	first := dialRaw(t, sock)
	first.read(greetingSize)
	second := dialRaw(t, sock)
	second.closed()
	first.nc.Close()
	// The first's end is seen asynchronously: retry until a greeting.
	deadline := time.Now().Add(10 * time.Second)
	for {
		third := dialRaw(t, sock)
		b := make([]byte, greetingSize)
		if _, err := io.ReadFull(third.nc, b); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no client served after the first left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
