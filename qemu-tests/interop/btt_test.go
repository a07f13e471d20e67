package interop

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// The Linux BTT info block (drivers/nvdimm/btt.h, struct btt_sb) as far as
// these tests read it: version 1.1 puts the first one 4 KiB into the
// namespace.
const (
	infoOffset    = 4096
	infoSignature = "BTT_ARENA_INFO\x00\x00"
)

type infoBlock struct {
	UUID           [16]byte
	ParentUUID     [16]byte
	Major, Minor   uint16
	ExternalLBA    uint32 // external_lbasize
	ExternalNLBA   uint32
	InternalLBA    uint32
	InternalNLBA   uint32
	NFree          uint32
	MapOff, LogOff uint64
}

func readInfoBlock(t *testing.T, img string) infoBlock {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, infoOffset); err != nil {
		t.Fatalf("read info block of %s: %v", img, err)
	}
	if string(b[:16]) != infoSignature {
		t.Fatalf("%s at %d: signature %q, want %q", img, infoOffset, b[:16], infoSignature)
	}
	le := binary.LittleEndian
	var ib infoBlock
	copy(ib.UUID[:], b[16:32])
	copy(ib.ParentUUID[:], b[32:48])
	ib.Major, ib.Minor = le.Uint16(b[52:]), le.Uint16(b[54:])
	ib.ExternalLBA, ib.ExternalNLBA = le.Uint32(b[56:]), le.Uint32(b[60:])
	ib.InternalLBA, ib.InternalNLBA = le.Uint32(b[64:]), le.Uint32(b[68:])
	ib.NFree = le.Uint32(b[72:])
	ib.MapOff, ib.LogOff = le.Uint64(b[96:]), le.Uint64(b[104:])
	return ib
}

// flogSlotSeq is the sequence number of one of a lane's two flog entries
// (struct log_group: four 16-byte entries of which a 1.1 arena uses 0 and 1;
// seq is the last u32 of an entry). A fresh arena has seq 0 in slot 1.
func flogSlotSeq(t *testing.T, img string, ib infoBlock, lane, slot int) uint32 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4)
	off := int64(infoOffset) + int64(ib.LogOff) + int64(lane)*64 + int64(slot)*16 + 12
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read flog lane %d: %v", lane, err)
	}
	return binary.LittleEndian.Uint32(b)
}

// sparseImage makes the file a label-less NVDIMM is backed by.
func sparseImage(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "nvdimm.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return img
}

// pattern is n sectors of content that only this (test, lba, generation)
// produces, so a sector read from the wrong place cannot pass.
func pattern(t *testing.T, lba uint64, generation, n, sectorSize int) []byte {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s/%d/%d", t.Name(), lba, generation)))
	r := mrand.NewChaCha8(h)
	b := make([]byte, n*sectorSize)
	_, _ = r.Read(b)
	return b
}

func newUUID(t *testing.T) string {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		t.Fatal(err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func uuidBytes(t *testing.T, s string) [16]byte {
	var u [16]byte
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		t.Fatalf("bad uuid %q: %v", s, err)
	}
	copy(u[:], b)
	return u
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// write is one write the guest or host makes: Data covers whole sectors
// from LBA.
type write struct {
	LBA  uint64
	Data []byte
}

// expected folds writes, in order, into the final content per LBA.
func expected(writes []write, sectorSize int) map[uint64][]byte {
	m := map[uint64][]byte{}
	for _, w := range writes {
		for i := 0; i*sectorSize < len(w.Data); i++ {
			m[w.LBA+uint64(i)] = w.Data[i*sectorSize : (i+1)*sectorSize]
		}
	}
	return m
}

// checkGuestReads compares the digests the agent reported for a
// read-sectors step with the expected content; LBAs not in want must be
// zero.
func checkGuestReads(t *testing.T, got []agentproto.SectorDigest, want map[uint64][]byte, sectorSize int) {
	t.Helper()
	for _, d := range got {
		w, ok := want[d.LBA]
		switch {
		case !ok && !d.Zero:
			t.Errorf("guest read of never-written LBA %d is not zero (starts %s)", d.LBA, d.Head)
		case ok && d.SHA256 != sha(w):
			t.Errorf("guest read of LBA %d starts %s, want %x", d.LBA, d.Head, w[:16])
		}
	}
}

// checkNvblkReads reads every LBA of lbas with nvblk and compares; LBAs
// not in want must be zero.
func checkNvblkReads(t *testing.T, img string, lbas []uint64, want map[uint64][]byte, sectorSize int) {
	t.Helper()
	zero := make([]byte, sectorSize)
	for _, lba := range lbas {
		out, err := suite.NVBLK(t, nil, "read", img, "--lba", strconv.FormatUint(lba, 10), "--count", "1")
		if err != nil {
			t.Errorf("nvblk read LBA %d: %v", lba, err)
			continue
		}
		w, ok := want[lba]
		if !ok {
			w = zero
		}
		if !bytes.Equal(out, w) {
			head := out
			if len(head) > 16 {
				head = head[:16]
			}
			t.Errorf("nvblk read LBA %d: %d bytes starting %x, want %d bytes starting %x", lba, len(out), head, len(w), w[:16])
		}
	}
}

// info is the part of `nvblk info --json` the tests compare with what the
// kernel reports.
type info struct {
	Version    string `json:"version"`
	UUID       string `json:"uuid"`
	SectorSize int    `json:"sector_size"`
	NumSectors uint64 `json:"num_sectors"`
}

func nvblkInfo(t *testing.T, img string) info {
	t.Helper()
	out, err := suite.NVBLK(t, nil, "info", img, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var i info
	if err := json.Unmarshal(out, &i); err != nil {
		t.Fatalf("nvblk info --json: %v\n%s", err, out)
	}
	return i
}
