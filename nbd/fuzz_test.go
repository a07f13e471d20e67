package nbd

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// fuzzConn is a client's bytes to read and a sink for what the server
// writes back.
type fuzzConn struct {
	r  io.Reader
	mu sync.Mutex // guards w
	w  bytes.Buffer
}

func (c *fuzzConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *fuzzConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.w.Write(p)
}

func clientFlags(f uint32) []byte { return be.AppendUint32(nil, f) }

// FuzzOptionParser feeds the server's handshake whatever a client might
// send after the greeting: it must end (every stream here ends) without a
// panic, and hand over only an export it has.
func FuzzOptionParser(f *testing.F) {
	std := clientFlags(clientFixedNewstyle | clientNoZeroes)
	f.Add(append(std, optionBytes(optGo, goData("disk", infoBlockSize))...))
	f.Add(append(std, optionBytes(optInfo, goData("disk", infoBlockSize, infoName))...))
	f.Add(append(append(std, optionBytes(optList, nil)...), optionBytes(optExportName, []byte("disk"))...))
	f.Add(append(std, optionBytes(optGo, append(be.AppendUint32(nil, 0xffffffff), 0, 0))...))
	f.Add(append(std, optionBytes(optStructuredReply, nil)...))
	f.Add(append(std, optionHeader{option: optGo, length: 0xfffffff0}.appendTo(nil)...))
	f.Add(append(std, optionBytes(optAbort, nil)...))
	f.Add(clientFlags(0xffffffff))
	disk := newMemExport(512, 8)
	ex, err := newServed("disk", disk, ExportOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conn := &fuzzConn{r: bytes.NewReader(data)}
		n := negotiator{rw: conn,
			lookup: func(name string) *served {
				if name == "disk" {
					return ex
				}
				return nil
			},
			list: func() []string { return []string{"disk"} },
		}
		got, err := n.run()
		if (got == nil) == (err == nil) {
			t.Fatalf("run returned export %v and error %v", got, err)
		}
		if got != nil && got != ex {
			t.Fatalf("run handed over an export it does not have")
		}
	})
}

// FuzzRequestParser feeds the transmission phase whatever a client might
// send after NBD_OPT_GO: it must end without a panic, every request having
// been answered or the stream abandoned, and the export must see only
// in-range, aligned I/O (memExport fails any other with an error the
// reply would show as EIO, which the check below refuses).
func FuzzRequestParser(f *testing.F) {
	req := func(r request, data []byte) []byte { return append(r.appendTo(nil), data...) }
	f.Add(req(request{typ: cmdRead, handle: 1, length: 512}, nil))
	f.Add(req(request{typ: cmdWrite, handle: 2, offset: 512, length: 512}, make([]byte, 512)))
	f.Add(req(request{typ: cmdWrite, flags: cmdFlagFUA, handle: 3, length: 100}, make([]byte, 100)))
	f.Add(req(request{typ: cmdTrim, handle: 4, offset: 100, length: 1000}, nil))
	f.Add(req(request{typ: cmdWriteZeroes, flags: cmdFlagNoHole, handle: 5, length: 4096}, nil))
	f.Add(req(request{typ: cmdFlush, handle: 6}, nil))
	f.Add(req(request{typ: cmdRead, handle: 7, offset: 1<<64 - 512, length: 1024}, nil))
	f.Add(req(request{typ: cmdWrite, handle: 8, length: 0xffffffff}, nil))
	f.Add(append(req(request{typ: cmdRead, handle: 9, length: 512}, nil), req(request{typ: cmdDisc}, nil)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		disk := newMemExport(512, 16)
		ex, err := newServed("disk", disk, ExportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		size, _ := ex.size()
		conn := &fuzzConn{r: bytes.NewReader(data)}
		s := newSession(ex, size, conn, 4, quietLogger().WithField("fuzz", true), func() {})
		s.run()
		// Every reply the server sent parses, and none is an EIO: the
		// export was never handed a request it could not serve.
		out := conn.w.Bytes()
		for len(out) >= simpleReplySize {
			rep, err := parseSimpleReply(out[:simpleReplySize])
			if err != nil {
				// A read's data follows its header; data is not a header,
				// so stop at the first thing that is not a reply.
				break
			}
			if rep.errno == errnoIO {
				t.Fatalf("a request reached the export that it refused")
			}
			out = out[simpleReplySize:]
		}
	})
}

// FuzzClientHandshake feeds the client's handshake whatever a server might
// send: it must end without a panic, and any export it accepts has a
// sane block size.
func FuzzClientHandshake(f *testing.F) {
	var good bytes.Buffer
	good.Write(greeting{flags: flagFixedNewstyle | flagNoZeroes}.appendTo(nil))
	info := infoExportPayload{size: 1 << 20, flags: tflagHasFlags}.appendTo(nil)
	good.Write(append(optionReplyHeader{option: optGo, replyType: repInfo, length: uint32(len(info))}.appendTo(nil), info...))
	bs := infoBlockSizePayload{min: 512, preferred: 4096, maxPayload: 1 << 20}.appendTo(nil)
	good.Write(append(optionReplyHeader{option: optGo, replyType: repInfo, length: uint32(len(bs))}.appendTo(nil), bs...))
	good.Write(optionReplyHeader{option: optGo, replyType: repAck}.appendTo(nil))
	f.Add(good.Bytes())
	f.Add(append(greeting{flags: flagFixedNewstyle}.appendTo(nil),
		optionReplyHeader{option: optGo, replyType: repErrUnsup}.appendTo(nil)...))
	f.Add(append(greeting{}.appendTo(nil), exportNameReply{size: 4096, flags: 1}.appendTo(nil)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := clientHandshake(&fuzzConn{r: bytes.NewReader(data)}, "disk")
		if err != nil {
			return
		}
		if info.MinBlock == 0 || info.MaxPayload < info.MinBlock || info.MaxPayload > defaultMaxPayload {
			t.Fatalf("accepted block sizes %+v", info)
		}
	})
}

// FuzzClientReplies feeds a client with requests in flight whatever a
// server might answer: every call must end, with its data or an error,
// and the client must not panic.
func FuzzClientReplies(f *testing.F) {
	reply := func(h uint64, errno uint32, data []byte) []byte {
		return append(simpleReply{errno: errno, handle: h}.appendTo(nil), data...)
	}
	f.Add(append(reply(1, 0, make([]byte, 512)), reply(2, 0, nil)...))
	f.Add(append(reply(2, errnoNoSpace, nil), reply(1, errnoIO, nil)...))
	f.Add(reply(7, 0, nil))
	f.Add([]byte("garbage that is no reply"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cn, sn := net.Pipe()
		c := &Client{
			nc: cn, info: ExportInfo{Size: 1 << 20, CanFlush: true, MinBlock: 512, MaxPayload: 1 << 20},
			chunk: 1 << 20, slots: make(chan struct{}, 4), pending: map[uint64]*call{}, recvDone: make(chan struct{}),
		}
		go c.receive()
		// The server's end: swallow the requests, send data, hang up.
		go io.Copy(io.Discard, sn)
		go func() {
			sn.Write(data)
			time.Sleep(time.Millisecond)
			sn.Close()
		}()
		var wg sync.WaitGroup
		wg.Go(func() { c.ReadAt(make([]byte, 512), 0) })
		wg.Go(func() { c.Flush() })
		wg.Wait()
		c.Close()
	})
}
