package vhostuser

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func TestWireGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  []byte
		want string
	}{
		{"header", Header{ReqSetVringAddr, FlagVersion | FlagNeedReply, 40}.AppendTo(nil),
			"09000000" + "09000000" + "28000000"},
		{"u64", EncodeU64(0x0102030405060708), "0807060504030201"},
		{"vring state", VringState{Index: 1, Num: 256}.Encode(), "01000000" + "00010000"},
		{"vring addr", VringAddr{Index: 2, Flags: 1, Desc: 0x10, Used: 0x20, Avail: 0x30, Log: 0x40}.Encode(),
			"02000000" + "01000000" + "1000000000000000" + "2000000000000000" + "3000000000000000" + "4000000000000000"},
		{"mem table", EncodeMemTable([]MemRegion{{GuestAddr: 1, Size: 2, UserAddr: 3, MmapOffset: 4}}),
			"01000000" + "00000000" + "0100000000000000" + "0200000000000000" + "0300000000000000" + "0400000000000000"},
		{"single region", EncodeSingleRegion(MemRegion{GuestAddr: 1, Size: 2, UserAddr: 3, MmapOffset: 4}),
			"0000000000000000" + "0100000000000000" + "0200000000000000" + "0300000000000000" + "0400000000000000"},
		{"config", ConfigSpace{Offset: 4, Flags: 1, Payload: []byte{0xaa, 0xbb}}.Encode(),
			"04000000" + "02000000" + "01000000" + "aabb"},
		{"message", EncodeMessage(ReqGetFeatures, FlagVersion, nil), "01000000" + "01000000" + "00000000"},
		{"inflight", Inflight{MmapSize: 0x2080, MmapOffset: 0x40, NumQueues: 2, QueueSize: 128}.Encode(),
			"8020000000000000" + "4000000000000000" + "0200" + "8000" + "00000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h := hex.EncodeToString(tc.got); h != tc.want {
				t.Fatalf("got  %s\nwant %s", h, tc.want)
			}
		})
	}
	if ReplyFlags != 0x5 {
		t.Fatalf("reply flags %#x", ReplyFlags)
	}
}

func TestDecodeMessage(t *testing.T) {
	hdr := func(r Request, size int) Header { return Header{r, FlagVersion, uint32(size)} }
	table := EncodeMemTable([]MemRegion{{1, 2, 3, 4}, {5, 6, 7, 8}})
	for _, tc := range []struct {
		name    string
		hdr     Header
		payload []byte
		nfds    int
		bad     bool
	}{
		{"get features", hdr(ReqGetFeatures, 0), nil, 0, false},
		{"get features with payload", hdr(ReqGetFeatures, 8), make([]byte, 8), 0, true},
		{"set features short", hdr(ReqSetFeatures, 4), make([]byte, 4), 0, true},
		{"bad version", Header{ReqGetFeatures, 2, 0}, nil, 0, true},
		{"reply flag on request", Header{ReqGetFeatures, FlagVersion | FlagReply, 0}, nil, 0, true},
		{"size mismatch", Header{ReqSetFeatures, FlagVersion, 9}, make([]byte, 8), 0, true},
		{"fd where none expected", hdr(ReqSetFeatures, 8), make([]byte, 8), 1, true},
		{"too many fds", hdr(ReqSetMemTable, len(table)), table, 9, true},
		{"mem table", hdr(ReqSetMemTable, len(table)), table, 2, false},
		{"mem table fd count", hdr(ReqSetMemTable, len(table)), table, 1, true},
		{"mem table zero regions", hdr(ReqSetMemTable, 8), make([]byte, 8), 0, true},
		{"mem table 9 regions", hdr(ReqSetMemTable, 8+9*32), append([]byte{9, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 9*32)...), 8, true},
		{"mem table trailing bytes", hdr(ReqSetMemTable, len(table)+1), append(table[:len(table):len(table)], 0), 2, true},
		{"kick with fd", hdr(ReqSetVringKick, 8), EncodeU64(1), 1, false},
		{"kick nofd", hdr(ReqSetVringKick, 8), EncodeU64(1 | VringNoFD), 0, false},
		{"kick nofd with fd", hdr(ReqSetVringKick, 8), EncodeU64(1 | VringNoFD), 1, true},
		{"kick missing fd", hdr(ReqSetVringKick, 8), EncodeU64(1), 0, true},
		{"kick reserved bits", hdr(ReqSetVringKick, 8), EncodeU64(1 << 9), 1, true},
		{"rem reg no fd", hdr(ReqRemMemReg, 40), make([]byte, 40), 0, false},
		{"rem reg one fd", hdr(ReqRemMemReg, 40), make([]byte, 40), 1, false},
		{"add reg no fd", hdr(ReqAddMemReg, 40), make([]byte, 40), 0, true},
		{"config", hdr(ReqGetConfig, 12+4), ConfigSpace{Payload: make([]byte, 4)}.Encode(), 0, false},
		{"config size lies", hdr(ReqGetConfig, 12+4), append(le.AppendUint32(le.AppendUint32(nil, 0), 5), make([]byte, 8)...), 0, true},
		{"config too big", hdr(ReqGetConfig, 12+257), ConfigSpace{Payload: make([]byte, 257)}.Encode(), 0, true},
		{"unknown", hdr(Request(99), 3), make([]byte, 3), 2, false},
		{"vring addr short", hdr(ReqSetVringAddr, 39), make([]byte, 39), 0, true},
		{"get inflight", hdr(ReqGetInflightFD, 24), Inflight{NumQueues: 1, QueueSize: 128}.Encode(), 0, false},
		{"get inflight packed size", hdr(ReqGetInflightFD, 20), make([]byte, 20), 0, true},
		{"get inflight with fd", hdr(ReqGetInflightFD, 24), make([]byte, 24), 1, true},
		{"set inflight", hdr(ReqSetInflightFD, 24), Inflight{MmapSize: 4096, NumQueues: 1, QueueSize: 128}.Encode(), 1, false},
		{"set inflight no fd", hdr(ReqSetInflightFD, 24), make([]byte, 24), 0, true},
		{"set log base", hdr(ReqSetLogBase, 16), Log{MmapSize: 4096}.Encode(), 1, false},
		// The missing fd is the session's to refuse, with the reply
		// QEMU waits for.
		{"set log base no fd", hdr(ReqSetLogBase, 16), Log{MmapSize: 4096}.Encode(), 0, false},
		{"set log base two fds", hdr(ReqSetLogBase, 16), Log{MmapSize: 4096}.Encode(), 2, true},
		{"set log base short", hdr(ReqSetLogBase, 8), EncodeU64(4096), 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMessage(tc.hdr, tc.payload, tc.nfds)
			if tc.bad != (err != nil) {
				t.Fatalf("err = %v, want bad=%v", err, tc.bad)
			}
			if err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("err %v does not wrap ErrMalformed", err)
			}
		})
	}
}

func FuzzDecodeMessage(f *testing.F) {
	f.Add(EncodeMessage(ReqSetMemTable, FlagVersion, EncodeMemTable([]MemRegion{{1, 2, 3, 4}})), uint8(1))
	f.Add(EncodeMessage(ReqGetConfig, FlagVersion, ConfigSpace{Payload: make([]byte, 60)}.Encode()), uint8(0))
	f.Add(EncodeMessage(ReqSetVringAddr, FlagVersion|FlagNeedReply, VringAddr{}.Encode()), uint8(0))
	f.Add(EncodeMessage(ReqSetVringKick, FlagVersion, EncodeU64(VringNoFD)), uint8(0))
	f.Add(EncodeMessage(ReqAddMemReg, FlagVersion, EncodeSingleRegion(MemRegion{})), uint8(1))
	f.Add(EncodeMessage(ReqSetInflightFD, FlagVersion, Inflight{MmapSize: 4096, NumQueues: 1, QueueSize: 64}.Encode()), uint8(1))
	f.Add(EncodeMessage(ReqSetLogBase, FlagVersion, Log{MmapSize: 4096, MmapOffset: 8}.Encode()), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, nfds uint8) {
		hdr, err := DecodeHeader(b)
		if err != nil {
			return
		}
		payload := b[HeaderSize:]
		m, err := DecodeMessage(hdr, payload, int(nfds))
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if int(nfds) > MaxFDs || len(payload) != int(hdr.Size) {
			t.Fatalf("accepted %d fds, size %d for %d bytes", nfds, hdr.Size, len(payload))
		}
		// Accepted messages re-encode to the same payload.
		var again []byte
		switch hdr.Request {
		case ReqSetMemTable:
			again = EncodeMemTable(m.Regions)
			copy(again[4:8], payload[4:8]) // padding is not kept
		case ReqSetVringAddr:
			again = m.Addr.Encode()
		case ReqGetConfig, ReqSetConfig:
			again = m.Config.Encode()
		case ReqSetLogBase:
			if nfds > 1 {
				t.Fatalf("SET_LOG_BASE accepted with %d fds", nfds)
			}
			again = m.Log.Encode()
		case ReqGetInflightFD, ReqSetInflightFD:
			again = m.Inflight.Encode()
			copy(again[20:], payload[20:]) // padding is not kept
		case ReqAddMemReg, ReqRemMemReg:
			again = EncodeSingleRegion(m.Regions[0])
			copy(again[:8], payload[:8]) // padding is not kept
		default:
			return
		}
		if !bytes.Equal(again, payload) {
			t.Fatalf("re-encoded %x, got %x", again, payload)
		}
	})
}
