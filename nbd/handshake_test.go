package nbd

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/internal/fdcheck"
)

const testSectors = 64 // of 512 bytes: a 32 KiB export

func goData(name string, infos ...uint16) []byte {
	return infoRequest{name: name, infos: infos}.appendTo(nil)
}

// wantReply is one option reply a case expects; data nil is not checked.
type wantReply struct {
	opt, typ uint32
	data     []byte
}

func infoExportReply(opt uint32, flags uint16) wantReply {
	return wantReply{opt, repInfo, infoExportPayload{size: testSectors * 512, flags: flags}.appendTo(nil)}
}

func blockSizeReply(opt uint32) wantReply {
	return wantReply{opt, repInfo, infoBlockSizePayload{min: 512, preferred: 512, maxPayload: 32 << 20}.appendTo(nil)}
}

const writableFlags = tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagCanMultiConn

// TestOptionHaggling runs the server's side of fixed newstyle negotiation
// through well-formed and hostile clients. After the replies it expects,
// a case ends in one of three ways: "open" (the server still negotiates:
// an NBD_OPT_ABORT gets its ACK), "closed" (the server hung up) or
// "transmission" (a read of the first sector is answered).
func TestOptionHaggling(t *testing.T) {
	fdcheck.Check(t)
	long := strings.Repeat("n", maxStringLength+1)
	for _, tc := range []struct {
		name  string
		flags uint32
		send  []byte
		want  []wantReply
		then  string
	}{
		{"GO enters transmission with the export's size, flags and block sizes", 0,
			optionBytes(optGo, goData("disk", infoBlockSize)),
			[]wantReply{infoExportReply(optGo, writableFlags), blockSizeReply(optGo), {optGo, repAck, []byte{}}}, "transmission"},
		{"GO with no information requests gets the block sizes anyway", 0,
			optionBytes(optGo, goData("disk")),
			[]wantReply{infoExportReply(optGo, writableFlags), blockSizeReply(optGo), {optGo, repAck, nil}}, "transmission"},
		{"GO ignores information types it does not know", 0,
			optionBytes(optGo, goData("disk", 0x7777, infoName)),
			[]wantReply{infoExportReply(optGo, writableFlags), blockSizeReply(optGo), {optGo, repAck, nil}}, "transmission"},
		{"GO of the read-only export says READ_ONLY and offers no trim", 0,
			optionBytes(optGo, goData("ro")),
			[]wantReply{infoExportReply(optGo, tflagHasFlags|tflagReadOnly|tflagSendFlush|tflagSendFUA|tflagCanMultiConn),
				blockSizeReply(optGo), {optGo, repAck, nil}}, "transmission"},
		{"INFO describes the export and stays in negotiation", 0,
			optionBytes(optInfo, goData("disk", infoBlockSize)),
			[]wantReply{infoExportReply(optInfo, writableFlags), blockSizeReply(optInfo), {optInfo, repAck, nil}}, "open"},
		{"INFO then GO", 0,
			append(optionBytes(optInfo, goData("disk")), optionBytes(optGo, goData("disk"))...),
			[]wantReply{infoExportReply(optInfo, writableFlags), blockSizeReply(optInfo), {optInfo, repAck, nil},
				infoExportReply(optGo, writableFlags), blockSizeReply(optGo), {optGo, repAck, nil}}, "transmission"},
		{"GO of an unknown export is ERR_UNKNOWN and negotiation goes on", 0,
			optionBytes(optGo, goData("nope")),
			[]wantReply{{optGo, repErrUnknown, nil}}, "open"},
		{"GO with the default export's empty name finds none here", 0,
			optionBytes(optGo, goData("")),
			[]wantReply{{optGo, repErrUnknown, nil}}, "open"},
		{"GO with a name longer than 4096 bytes is ERR_INVALID", 0,
			optionBytes(optGo, goData(long)),
			[]wantReply{{optGo, repErrInvalid, nil}}, "open"},
		{"GO whose name length points past its data is ERR_INVALID", 0,
			optionBytes(optGo, append(be.AppendUint32(nil, 100), "disk\x00\x00"...)),
			[]wantReply{{optGo, repErrInvalid, nil}}, "open"},
		{"GO whose request count disagrees with its data is ERR_INVALID", 0,
			optionBytes(optGo, append(goData("disk"), 0, 3)),
			[]wantReply{{optGo, repErrInvalid, nil}}, "open"},
		{"GO with no data at all is ERR_INVALID", 0,
			optionBytes(optGo, nil),
			[]wantReply{{optGo, repErrInvalid, nil}}, "open"},
		{"LIST names every export, sorted, then ACK", 0,
			optionBytes(optList, nil),
			[]wantReply{{optList, repServ, serverPayload{name: "disk"}.appendTo(nil)},
				{optList, repServ, serverPayload{name: "ro"}.appendTo(nil)}, {optList, repAck, nil}}, "open"},
		{"LIST with data is ERR_INVALID", 0,
			optionBytes(optList, []byte("x")),
			[]wantReply{{optList, repErrInvalid, nil}}, "open"},
		{"STARTTLS is unsupported: no TLS", 0,
			optionBytes(optStartTLS, nil),
			[]wantReply{{optStartTLS, repErrUnsup, nil}}, "open"},
		{"STRUCTURED_REPLY is unsupported", 0,
			optionBytes(optStructuredReply, nil),
			[]wantReply{{optStructuredReply, repErrUnsup, nil}}, "open"},
		{"SET_META_CONTEXT is unsupported", 0,
			optionBytes(optSetMetaContext, []byte("\x00\x00\x00\x04disk\x00\x00\x00\x00")),
			[]wantReply{{optSetMetaContext, repErrUnsup, nil}}, "open"},
		{"an unknown option is unsupported and its data skipped", 0,
			optionBytes(0x12345, bytes.Repeat([]byte{0xee}, 300)),
			[]wantReply{{0x12345, repErrUnsup, nil}}, "open"},
		{"an option of the most data taken is read and answered", 0,
			optionBytes(0x12345, make([]byte, maxOptionData)),
			[]wantReply{{0x12345, repErrUnsup, nil}}, "open"},
		{"an option with more data than taken hangs up", 0,
			optionHeader{option: optGo, length: maxOptionData + 1}.appendTo(nil), nil, "closed"},
		{"an option claiming 4 GiB of data hangs up without reading it", 0,
			optionHeader{option: 0x12345, length: 0xffffffff}.appendTo(nil), nil, "closed"},
		{"an option with a bad magic hangs up", 0,
			append([]byte("IHAVEOPX"), 0, 0, 0, 7, 0, 0, 0, 0), nil, "closed"},
		{"unknown client flags hang up", clientFixedNewstyle | 1<<5, nil, nil, "closed"},
		{"ABORT is acknowledged and the server hangs up", 0,
			optionBytes(optAbort, nil), []wantReply{{optAbort, repAck, nil}}, "closed"},
		{"ABORT with data is acknowledged all the same", 0,
			optionBytes(optAbort, []byte("bye")), []wantReply{{optAbort, repAck, nil}}, "closed"},
		{"EXPORT_NAME of an unknown export hangs up", 0,
			optionBytes(optExportName, []byte("nope")), nil, "closed"},
		{"EXPORT_NAME longer than 4096 bytes hangs up", 0,
			optionBytes(optExportName, []byte(long)), nil, "closed"},
		{"more options than taken hang up", 0,
			bytes.Repeat(optionBytes(0x12345, nil), maxOptions+1), repeatReply(wantReply{0x12345, repErrUnsup, nil}, maxOptions), "closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, sock := startServer(t, ServerOptions{}, testExports())
			r := dialRaw(t, sock)
			flags := tc.flags
			if flags == 0 {
				flags = clientFixedNewstyle | clientNoZeroes
			}
			r.greet(flags)
			if len(tc.send) > 0 {
				r.send(tc.send)
			}
			for i, w := range tc.want {
				h, data := r.optionReply()
				if h.option != w.opt || h.replyType != w.typ || (w.data != nil && !bytes.Equal(data, w.data)) {
					t.Fatalf("reply %d: option %d type %#x data %x, want option %d type %#x data %x",
						i, h.option, h.replyType, data, w.opt, w.typ, w.data)
				}
			}
			switch tc.then {
			case "open":
				r.send(optionBytes(optAbort, nil))
				if h, _ := r.optionReply(); h.option != optAbort || h.replyType != repAck {
					t.Fatalf("ABORT answered with option %d type %#x", h.option, h.replyType)
				}
				r.closed()
			case "closed":
				r.closed()
			case "transmission":
				r.send(request{typ: cmdRead, handle: 1, length: 512}.appendTo(nil))
				if rep := r.reply(); rep.errno != 0 || rep.handle != 1 {
					t.Fatalf("read reply %+v", rep)
				}
				r.read(512)
			}
		})
	}
}

// testExports are a writable "disk" and a read-only "ro" of testSectors
// sectors.
func testExports() map[string]Export {
	ro := newMemExport(512, testSectors)
	ro.readOnly = true
	return map[string]Export{"disk": newMemExport(512, testSectors), "ro": ro}
}

func repeatReply(w wantReply, n int) []wantReply {
	out := make([]wantReply, n)
	for i := range out {
		out[i] = w
	}
	return out
}
