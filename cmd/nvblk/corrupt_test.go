package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/btt"
)

// arena0 reads arena 0's absolute offsets with `nvblk info --json`.
func arena0(t *testing.T, img string) btt.ArenaInfo {
	t.Helper()
	code, out, stderr := nvblk(t, nil, "info", img, "--json")
	if code != 0 {
		t.Fatalf("info: exit %d: %s", code, stderr)
	}
	var info imageInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Arenas) == 0 {
		t.Fatalf("info --json: %v\n%s", err, out)
	}
	return info.Arenas[0]
}

func poke(t *testing.T, img string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

// TestCheckNamesEachCorruption: `nvblk check` (without --repair) on an image
// damaged in one way names that damage, exits 1, and writes nothing.
func TestCheckNamesEachCorruption(t *testing.T) {
	const mapNormal = 0xc0000000
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, img string, a btt.ArenaInfo)
		// stdout and stderr must contain these
		out, err string
	}{
		{"damaged info block", func(t *testing.T, img string, a btt.ArenaInfo) {
			poke(t, img, a.Offset+200, []byte{0xa5})
		}, "arena 0: info: error (repairable with --repair): info block damaged", ""},
		{"damaged info2 block", func(t *testing.T, img string, a btt.ArenaInfo) {
			poke(t, img, a.Info2Off+200, []byte{0xa5})
		}, "arena 0: info2: error (repairable with --repair): backup info2", ""},
		{"both info blocks damaged", func(t *testing.T, img string, a btt.ArenaInfo) {
			poke(t, img, a.Offset+200, []byte{0xa5})
			poke(t, img, a.Info2Off+200, []byte{0xa5})
		}, "", "metadata corrupt"},
		{"map entry past the arena", func(t *testing.T, img string, a btt.ArenaInfo) {
			poke(t, img, a.MapOff+5*btt.MapEntrySize, le32((a.InternalNLBA+10)|mapNormal))
		}, "arena 0: map: error: LBA 5 maps to block", ""},
		{"two LBAs on one block", func(t *testing.T, img string, a btt.ArenaInfo) {
			poke(t, img, a.MapOff+5*btt.MapEntrySize, le32(6|mapNormal))
		}, "arena 0: blocks: error: LBA 6 maps to block 6, which another LBA", ""},
		{"impossible flog sequence numbers", func(t *testing.T, img string, a btt.ArenaInfo) {
			e := append(append(append(le32(3), le32(a.ExternalNLBA+3)...), le32(a.ExternalNLBA+3)...), le32(2)...)
			poke(t, img, a.LogOff+3*btt.FlogGroupSize, e)
			poke(t, img, a.LogOff+3*btt.FlogGroupSize+btt.FlogEntrySize, e)
		}, "arena 0: flog: error: lane 3", ""},
		{"flog entry past the arena", func(t *testing.T, img string, a btt.ArenaInfo) {
			e := append(append(append(le32(3), le32(a.InternalNLBA+7)...), le32(a.ExternalNLBA+3)...), le32(2)...)
			poke(t, img, a.LogOff+3*btt.FlogGroupSize+btt.FlogEntrySize, e)
		}, "lane 3 flog entry {LBA:3 OldMap:", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := formatted(t)
			a := arena0(t, img)
			tc.damage(t, img, a)
			before := fileHash(t, img)
			code, out, stderr := nvblk(t, nil, "check", img)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			if !strings.Contains(out, tc.out) || !strings.Contains(stderr, tc.err) {
				t.Errorf("output does not name the damage (want %q / %q):\n%s%s", tc.out, tc.err, out, stderr)
			}
			if tc.out != "" && !strings.Contains(out, "INCONSISTENT") {
				t.Errorf("no verdict:\n%s", out)
			}
			if fileHash(t, img) != before {
				t.Error("check without --repair wrote to the image")
			}
			// The JSON report says the same (and writes nothing either).
			if tc.out != "" {
				code, out, _ := nvblk(t, nil, "check", img, "--json")
				var rep btt.CheckReport
				if err := json.Unmarshal([]byte(out), &rep); code != 1 || err != nil || rep.Consistent || len(rep.Problems) == 0 {
					t.Errorf("check --json: exit %d, %v: %s", code, err, out)
				}
				if fileHash(t, img) != before {
					t.Error("check --json wrote to the image")
				}
			}
		})
	}
}
