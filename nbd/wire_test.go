package nbd

import (
	"encoding/hex"
	"errors"
	"reflect"
	"testing"
)

// TestWireGolden pins every message's bytes, written out by hand from
// proto.md, and parses them back.
func TestWireGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		got   []byte
		want  string
		parse func([]byte) (any, error)
		value any
	}{
		{"greeting", greeting{flags: flagFixedNewstyle | flagNoZeroes}.appendTo(nil),
			"4e42444d41474943" + "49484156454f5054" + "0003",
			func(b []byte) (any, error) { return parseGreeting(b) }, greeting{flags: 3}},
		{"option header", optionHeader{option: optGo, length: 0x0a}.appendTo(nil),
			"49484156454f5054" + "00000007" + "0000000a",
			func(b []byte) (any, error) { return parseOptionHeader(b) }, optionHeader{option: 7, length: 10}},
		{"option reply header", optionReplyHeader{option: optInfo, replyType: repErrUnknown, length: 2}.appendTo(nil),
			"0003e889045565a9" + "00000006" + "80000006" + "00000002",
			func(b []byte) (any, error) { return parseOptionReplyHeader(b) },
			optionReplyHeader{option: 6, replyType: 0x80000006, length: 2}},
		{"export name reply", exportNameReply{size: 0x10000, flags: 0x016d}.appendTo(nil),
			"0000000000010000" + "016d",
			func(b []byte) (any, error) { return parseExportNameReply(b) }, exportNameReply{size: 0x10000, flags: 0x016d}},
		{"NBD_INFO_EXPORT", infoExportPayload{size: 0x0102030405060708, flags: 0x0103}.appendTo(nil),
			"0000" + "0102030405060708" + "0103",
			func(b []byte) (any, error) { return parseInfoExport(b) }, infoExportPayload{size: 0x0102030405060708, flags: 0x0103}},
		{"NBD_INFO_BLOCK_SIZE", infoBlockSizePayload{min: 512, preferred: 4096, maxPayload: 32 << 20}.appendTo(nil),
			"0003" + "00000200" + "00001000" + "02000000",
			func(b []byte) (any, error) { return parseInfoBlockSize(b) }, infoBlockSizePayload{512, 4096, 32 << 20}},
		{"NBD_OPT_GO data", infoRequest{name: "vda", infos: []uint16{infoBlockSize, infoName}}.appendTo(nil),
			"00000003" + "766461" + "0002" + "0003" + "0001",
			func(b []byte) (any, error) { return parseInfoRequest(b) }, infoRequest{name: "vda", infos: []uint16{3, 1}}},
		{"NBD_OPT_GO data, no name, no requests", infoRequest{infos: []uint16{}}.appendTo(nil),
			"00000000" + "0000",
			func(b []byte) (any, error) { return parseInfoRequest(b) }, infoRequest{infos: []uint16{}}},
		{"NBD_REP_SERVER", serverPayload{name: "disk"}.appendTo(nil),
			"00000004" + "6469736b",
			func(b []byte) (any, error) { return parseServerPayload(b) }, serverPayload{name: "disk"}},
		{"request", request{flags: cmdFlagFUA, typ: cmdWrite, handle: 0x1122334455667788, offset: 0x1000, length: 0x200}.appendTo(nil),
			"25609513" + "0001" + "0001" + "1122334455667788" + "0000000000001000" + "00000200",
			func(b []byte) (any, error) { return parseRequest(b) },
			request{flags: 1, typ: 1, handle: 0x1122334455667788, offset: 0x1000, length: 0x200}},
		{"simple reply", simpleReply{errno: errnoNoSpace, handle: 0x0102}.appendTo(nil),
			"67446698" + "0000001c" + "0000000000000102",
			func(b []byte) (any, error) { return parseSimpleReply(b) }, simpleReply{errno: 28, handle: 0x0102}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h := hex.EncodeToString(tc.got); h != tc.want {
				t.Fatalf("got  %s\nwant %s", h, tc.want)
			}
			v, err := tc.parse(tc.got)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(v, tc.value) {
				t.Fatalf("parsed %+v, want %+v", v, tc.value)
			}
		})
	}
}

// TestWireSizesMatchTheSpec: the size constants are the lengths of the
// encodings, so a reader sized by them reads whole messages.
func TestWireSizesMatchTheSpec(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		size int
	}{
		{"greeting", greeting{}.appendTo(nil), greetingSize},
		{"option header", optionHeader{}.appendTo(nil), optionHeaderSize},
		{"option reply header", optionReplyHeader{}.appendTo(nil), optionReplyHeaderSize},
		{"export name reply", exportNameReply{}.appendTo(nil), exportNameReplySize},
		{"info export", infoExportPayload{}.appendTo(nil), infoExportSize},
		{"info block size", infoBlockSizePayload{}.appendTo(nil), infoBlockSizeSize},
		{"request", request{}.appendTo(nil), requestSize},
		{"simple reply", simpleReply{}.appendTo(nil), simpleReplySize},
	} {
		if len(tc.b) != tc.size {
			t.Errorf("%s: %d bytes, constant says %d", tc.name, len(tc.b), tc.size)
		}
	}
	if exportNameReplySize+exportNameZeroes != 134 {
		t.Errorf("NBD_OPT_EXPORT_NAME reply with zeroes: %d bytes, want 134", exportNameReplySize+exportNameZeroes)
	}
}

// TestWireParsersRefuseMalformedBytes: wrong magic, wrong length, and
// lengths inside NBD_OPT_GO's data that point past its end.
func TestWireParsersRefuseMalformedBytes(t *testing.T) {
	mustHex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		parse func([]byte) error
		b     []byte
	}{
		{"oldstyle greeting", func(b []byte) error { _, err := parseGreeting(b); return err },
			mustHex("4e42444d41474943" + "0000420281861253" + "0000")},
		{"option with reply magic", func(b []byte) error { _, err := parseOptionHeader(b); return err },
			mustHex("0003e889045565a9" + "00000007" + "00000000")},
		{"request with reply magic", func(b []byte) error { _, err := parseRequest(b); return err },
			mustHex("67446698" + "0000" + "0000" + "0000000000000000" + "0000000000000000" + "00000000")},
		{"short request", func(b []byte) error { _, err := parseRequest(b); return err },
			mustHex("25609513" + "0000")},
		{"structured reply", func(b []byte) error { _, err := parseSimpleReply(b); return err },
			mustHex("668e33ef" + "00000000" + "0000000000000001")},
		{"GO name longer than the data", func(b []byte) error { _, err := parseInfoRequest(b); return err },
			mustHex("00000010" + "766461" + "0000")},
		{"GO name length 2^32-1", func(b []byte) error { _, err := parseInfoRequest(b); return err },
			mustHex("ffffffff" + "0000")},
		{"GO with fewer requests than counted", func(b []byte) error { _, err := parseInfoRequest(b); return err },
			mustHex("00000000" + "0002" + "0003")},
		{"GO with bytes after the requests", func(b []byte) error { _, err := parseInfoRequest(b); return err },
			mustHex("00000000" + "0001" + "0003" + "00")},
		{"GO data too short for a count", func(b []byte) error { _, err := parseInfoRequest(b); return err },
			mustHex("0000000000")},
		{"NBD_INFO_EXPORT of 11 bytes", func(b []byte) error { _, err := parseInfoExport(b); return err },
			mustHex("0000" + "0102030405060708" + "01")},
		{"NBD_REP_SERVER name past the end", func(b []byte) error { _, err := parseServerPayload(b); return err },
			mustHex("00000005" + "6469736b")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.parse(tc.b); !errors.Is(err, errMalformed) {
				t.Fatalf("err %v, want errMalformed", err)
			}
		})
	}
}
