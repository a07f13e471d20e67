package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/fdcheck"
)

func dialTest(t testing.TB, sock, export string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, ClientOptions{Export: export})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClientSeesTheExportAsTheServerDescribesIt.
func TestClientSeesTheExportAsTheServerDescribesIt(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{}, map[string]Export{
		"disk": newMemExport(4096, 16), "ro": testExports()["ro"]})
	for _, tc := range []struct {
		export string
		want   ExportInfo
	}{
		{"disk", ExportInfo{Size: 16 * 4096, CanFlush: true, CanFUA: true, CanTrim: true, CanWriteZeroes: true,
			CanMultiConn: true, MinBlock: 4096, PreferredBlock: 4096, MaxPayload: 32 << 20}},
		{"ro", ExportInfo{Size: testSectors * 512, ReadOnly: true, CanFlush: true, CanFUA: true,
			CanMultiConn: true, MinBlock: 512, PreferredBlock: 512, MaxPayload: 32 << 20}},
	} {
		if got := dialTest(t, sock, tc.export).Info(); got != tc.want {
			t.Errorf("%s: %+v\nwant %+v", tc.export, got, tc.want)
		}
	}
}

// TestClientReadsWhatItWroteFromManyGoroutines: writers on disjoint
// ranges, then every range read back, all through one connection.
func TestClientReadsWhatItWroteFromManyGoroutines(t *testing.T) {
	fdcheck.Check(t)
	disk := newMemExport(512, 2048) // 1 MiB
	_, sock := startServer(t, ServerOptions{}, map[string]Export{"disk": disk})
	c := dialTest(t, sock, "disk")
	const workers, span = 8, 128 << 10
	want := make([]byte, workers*span)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for off := w * span; off < (w+1)*span; off += 8192 {
				if _, err := c.WriteAt(want[off:off+8192], int64(off)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !bytes.Equal(disk.snapshot(), want) {
		t.Fatal("export differs from what was written")
	}
	got := make([]byte, len(want))
	if n, err := c.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatalf("ReadAt: %d, %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from what was written")
	}
}

// TestClientSplitsALargeWriteIntoRequestsInFlightTogether: with the
// payload limit at 4 KiB, a 64 KiB write goes as 16 requests that the
// server serves several at once.
func TestClientSplitsALargeWriteIntoRequestsInFlightTogether(t *testing.T) {
	fdcheck.Check(t)
	disk := newMemExport(512, 256)
	// Hold each write until four are in the export at once: only a client
	// that pipelines gets past it.
	var mu sync.Mutex // guards inside
	inside := 0
	disk.gate = func(op string, lba uint64) {
		if op != "write" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		inside++
		deadline := time.Now().Add(10 * time.Second)
		for inside < 4 && time.Now().Before(deadline) {
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
		}
	}
	_, sock := startServer(t, ServerOptions{}, map[string]Export{"disk": disk})
	c := dialTest(t, sock, "disk")
	c.chunk = 4096
	data := bytes.Repeat([]byte{0xc3}, 64<<10)
	if n, err := c.WriteAt(data, 8192); n != len(data) || err != nil {
		t.Fatalf("WriteAt: %d, %v", n, err)
	}
	if _, peak := disk.counts(); peak < 4 {
		t.Fatalf("at most %d writes at once in the export, want 4 or more", peak)
	}
	disk.mu.Lock()
	writes := 0
	for _, op := range disk.ops {
		if len(op) > 5 && op[:5] == "write" {
			writes++
		}
	}
	disk.mu.Unlock()
	if writes != 16 {
		t.Fatalf("%d write requests, want 16 of 4 KiB", writes)
	}
	if got := disk.snapshot()[8192 : 8192+64<<10]; !bytes.Equal(got, data) {
		t.Fatal("export differs from the write")
	}
}

// TestClientReadPastTheEndReadsToItAndSaysEOF (io.ReaderAt).
func TestClientReadPastTheEndReadsToItAndSaysEOF(t *testing.T) {
	fdcheck.Check(t)
	disk := newMemExport(512, testSectors)
	_, sock := startServer(t, ServerOptions{}, map[string]Export{"disk": disk})
	c := dialTest(t, sock, "disk")
	buf := make([]byte, 2048)
	n, err := c.ReadAt(buf, testSectors*512-1024)
	if n != 1024 || !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt across the end: %d, %v; want 1024, EOF", n, err)
	}
	if !bytes.Equal(buf[:1024], disk.snapshot()[testSectors*512-1024:]) {
		t.Fatal("data up to the end differs")
	}
	if n, err := c.ReadAt(buf, testSectors*512); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt at the end: %d, %v; want 0, EOF", n, err)
	}
}

// TestClientRefusesWhatTheServerWouldRefuse without sending it:
// misaligned I/O, writes past the end, negative offsets.
func TestClientRefusesWhatTheServerWouldRefuse(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{}, testExports())
	c := dialTest(t, sock, "disk")
	for _, tc := range []struct {
		name string
		do   func() error
		want error
	}{
		{"write of part of a sector", func() error { _, err := c.WriteAt(make([]byte, 100), 0); return err }, ErrUnaligned},
		{"read at an unaligned offset", func() error { _, err := c.ReadAt(make([]byte, 512), 3); return err }, ErrUnaligned},
		{"write past the end", func() error { _, err := c.WriteAt(make([]byte, 1024), testSectors*512-512); return err }, ErrOutOfRange},
		{"read at a negative offset", func() error { _, err := c.ReadAt(make([]byte, 512), -512); return err }, ErrOutOfRange},
		{"trim past the end", func() error { return c.Trim(0, testSectors*512+512) }, ErrOutOfRange},
	} {
		if err := tc.do(); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// The connection is untouched by them.
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestClientWriteToAReadOnlyExportIsEPERM: the server's error reaches the
// caller as a RemoteError that errors.Is matches to syscall.EPERM.
func TestClientWriteToAReadOnlyExportIsEPERM(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{}, testExports())
	c := dialTest(t, sock, "ro")
	_, err := c.WriteAt(make([]byte, 512), 0)
	var re *RemoteError
	if !errors.As(err, &re) || re.Errno != errnoPerm || !errors.Is(err, syscall.EPERM) {
		t.Fatalf("WriteAt on a read-only export: %v, want EPERM", err)
	}
	if err := c.Trim(0, 512); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("Trim on an export without SEND_TRIM: %v", err)
	}
}

// TestClientTrimAndWriteZeroesReachTheExport, with FUA writes flushing.
func TestClientTrimAndWriteZeroesReachTheExport(t *testing.T) {
	fdcheck.Check(t)
	disk := newMemExport(512, testSectors)
	before := disk.snapshot()
	_, sock := startServer(t, ServerOptions{}, map[string]Export{"disk": disk})
	c := dialTest(t, sock, "disk")
	if err := c.WriteZeroes(1024, 2048); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(8192, 4096); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(before)
	clear(want[1024:3072])
	clear(want[8192:12288])
	if !bytes.Equal(disk.snapshot(), want) {
		t.Fatal("export differs after write zeroes and trim")
	}
	if _, err := c.WriteAtFUA(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if f, _ := disk.counts(); f != 1 {
		t.Fatalf("%d flushes after a FUA write, want 1", f)
	}
}

// TestClientOfAnUnknownExportGetsErrUnknownExport, and closes its socket.
func TestClientOfAnUnknownExportGetsErrUnknownExport(t *testing.T) {
	fdcheck.Check(t)
	_, sock := startServer(t, ServerOptions{}, testExports())
	_, err := Dial(context.Background(), "unix", sock, ClientOptions{Export: "nope"})
	if !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("Dial: %v, want ErrUnknownExport", err)
	}
}

// TestClientCloseWaitsForCallsInFlightThenDisconnects: a read held in the
// export completes before Close returns, and later calls get ErrClosed.
func TestClientCloseWaitsForCallsInFlightThenDisconnects(t *testing.T) {
	fdcheck.Check(t)
	g := newGate()
	disk := newMemExport(512, testSectors)
	disk.gate = g.hold
	_, sock := startServer(t, ServerOptions{}, map[string]Export{"disk": disk})
	c := dialTest(t, sock, "disk")
	read := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 512), 0)
		read <- err
	}()
	<-g.arrived
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with a read in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.release(0)
	if err := <-read; err != nil {
		t.Fatalf("the read in flight: %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadAt after Close: %v, want ErrClosed", err)
	}
}

// fakeServer runs script on the server's end of one connection.
func fakeServer(t *testing.T, script func(nc net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := l.Accept()
		l.Close()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(20 * time.Second))
		script(nc)
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return sock
}

// fakeGo answers the client's greeting and NBD_OPT_GO with an export of
// size bytes, as a server would.
func fakeGo(nc net.Conn, size uint64) {
	nc.Write(greeting{flags: flagFixedNewstyle | flagNoZeroes}.appendTo(nil))
	io.ReadFull(nc, make([]byte, clientFlagsSize))
	hb := make([]byte, optionHeaderSize)
	io.ReadFull(nc, hb)
	h, _ := parseOptionHeader(hb)
	io.ReadFull(nc, make([]byte, h.length))
	info := infoExportPayload{size: size, flags: tflagHasFlags | tflagSendFlush}.appendTo(nil)
	nc.Write(append(optionReplyHeader{option: optGo, replyType: repInfo, length: uint32(len(info))}.appendTo(nil), info...))
	nc.Write(optionReplyHeader{option: optGo, replyType: repAck}.appendTo(nil))
}

// TestClientFallsBackToExportNameWhenGoIsUnsupported, as the spec asks
// of clients meeting an old server.
func TestClientFallsBackToExportNameWhenGoIsUnsupported(t *testing.T) {
	fdcheck.Check(t)
	gotName := make(chan string, 1)
	sock := fakeServer(t, func(nc net.Conn) {
		nc.Write(greeting{flags: flagFixedNewstyle}.appendTo(nil))
		io.ReadFull(nc, make([]byte, clientFlagsSize))
		hb := make([]byte, optionHeaderSize)
		io.ReadFull(nc, hb)
		h, _ := parseOptionHeader(hb)
		io.ReadFull(nc, make([]byte, h.length))
		nc.Write(optionReplyHeader{option: h.option, replyType: repErrUnsup}.appendTo(nil))
		io.ReadFull(nc, hb)
		h, _ = parseOptionHeader(hb)
		name := make([]byte, h.length)
		io.ReadFull(nc, name)
		if h.option != optExportName {
			name = fmt.Appendf(nil, "option %d", h.option)
		}
		gotName <- string(name)
		nc.Write(append(exportNameReply{size: 1 << 20, flags: tflagHasFlags | tflagReadOnly}.appendTo(nil),
			make([]byte, exportNameZeroes)...))
		// Serve one read of zeroes, then expect NBD_CMD_DISC.
		rb := make([]byte, requestSize)
		io.ReadFull(nc, rb)
		req, _ := parseRequest(rb)
		nc.Write(simpleReply{handle: req.handle}.appendTo(nil))
		nc.Write(make([]byte, req.length))
		io.ReadFull(nc, rb)
	})
	c := dialTest(t, sock, "old")
	if name := <-gotName; name != "old" {
		t.Fatalf("after ERR_UNSUP the client sent %q, want NBD_OPT_EXPORT_NAME \"old\"", name)
	}
	if info := c.Info(); info.Size != 1<<20 || !info.ReadOnly || info.MinBlock != 1 {
		t.Fatalf("info %+v", info)
	}
	if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// TestClientHangsUpOnAHostileServer: replies that cannot belong to any
// request fail the calls in flight with ErrProtocol, never a panic or a
// read into the wrong buffer.
func TestClientHangsUpOnAHostileServer(t *testing.T) {
	fdcheck.Check(t)
	for _, tc := range []struct {
		name  string
		reply func(req request) []byte
	}{
		{"reply to a handle never sent", func(req request) []byte {
			return simpleReply{handle: req.handle + 1}.appendTo(nil)
		}},
		{"structured reply never negotiated", func(req request) []byte {
			b := simpleReply{handle: req.handle}.appendTo(nil)
			be.PutUint32(b, structuredReplyMagic)
			return b
		}},
		{"bad reply magic", func(req request) []byte {
			return []byte("HTTP/1.1 400 Bad Request\r\n\r\n")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := fakeServer(t, func(nc net.Conn) {
				fakeGo(nc, 1<<20)
				rb := make([]byte, requestSize)
				io.ReadFull(nc, rb)
				req, _ := parseRequest(rb)
				nc.Write(tc.reply(req))
				io.Copy(io.Discard, nc)
			})
			c := dialTest(t, sock, "disk")
			if _, err := c.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrProtocol) {
				t.Fatalf("ReadAt: %v, want ErrProtocol", err)
			}
			if err := c.Flush(); !errors.Is(err, ErrProtocol) {
				t.Fatalf("Flush after the violation: %v, want the connection's ErrProtocol", err)
			}
		})
	}
}

// TestClientHandshakeEndsWithItsContext: a server that never greets does
// not hold Dial past ctx.
func TestClientHandshakeEndsWithItsContext(t *testing.T) {
	fdcheck.Check(t)
	sock := fakeServer(t, func(nc net.Conn) { io.Copy(io.Discard, nc) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, "unix", sock, ClientOptions{}); err == nil {
		t.Fatal("Dial succeeded against a server that never greets")
	}
}

// TestClientRefusesNonsensicalBlockSizes from a server: a minimum block
// that is no power of two would have every request misaligned.
func TestClientRefusesNonsensicalBlockSizes(t *testing.T) {
	fdcheck.Check(t)
	sock := fakeServer(t, func(nc net.Conn) {
		nc.Write(greeting{flags: flagFixedNewstyle | flagNoZeroes}.appendTo(nil))
		io.ReadFull(nc, make([]byte, clientFlagsSize))
		hb := make([]byte, optionHeaderSize)
		io.ReadFull(nc, hb)
		h, _ := parseOptionHeader(hb)
		io.ReadFull(nc, make([]byte, h.length))
		bs := infoBlockSizePayload{min: 3000, preferred: 4096, maxPayload: 1 << 20}.appendTo(nil)
		nc.Write(append(optionReplyHeader{option: optGo, replyType: repInfo, length: uint32(len(bs))}.appendTo(nil), bs...))
		io.Copy(io.Discard, nc)
	})
	if _, err := Dial(context.Background(), "unix", sock, ClientOptions{}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Dial: %v, want ErrProtocol", err)
	}
}
