package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// nvblk runs the command in-process and returns its exit code and output.
func nvblk(t *testing.T, stdin []byte, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &environment{stdin: bytes.NewReader(stdin), stdout: &out, stderr: &errb}
	code = run(env, args)
	return code, out.String(), errb.String()
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func formatted(t *testing.T, args ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	code, _, stderr := nvblk(t, nil, append([]string{"format", img, "--size", "32M"}, args...)...)
	if code != 0 {
		t.Fatalf("format: exit %d: %s", code, stderr)
	}
	return img
}

func TestGrowKeepsAnImagesSectorsAndAddsAnArena(t *testing.T) {
	img := formatted(t)
	data := bytes.Repeat([]byte("grown"), 4096/5+1)[:4096]
	if code, _, stderr := nvblk(t, data, "write", img, "--lba", "7"); code != 0 {
		t.Fatalf("write: exit %d: %s", code, stderr)
	}
	code, out, stderr := nvblk(t, nil, "grow", img, "--size", "80M")
	if code != 0 || !strings.Contains(out, "1 arena(s) added, 2 in all") {
		t.Fatalf("grow: exit %d: %s%s", code, out, stderr)
	}
	if code, out, _ := nvblk(t, nil, "read", img, "--lba", "7"); code != 0 || out != string(data) {
		t.Fatalf("LBA 7 after grow: exit %d, same %v", code, out == string(data))
	}
	code, out, _ = nvblk(t, nil, "info", img, "--json")
	var info struct {
		Sectors uint64 `json:"num_sectors"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info.Sectors < 15000 {
		t.Fatalf("info after grow: exit %d: %s", code, out)
	}
	last := fmt.Sprint(info.Sectors - 1)
	if code, _, stderr := nvblk(t, data, "write", img, "--lba", last); code != 0 {
		t.Fatalf("write of the new last LBA %s: exit %d: %s", last, code, stderr)
	}
	if code, out, stderr := nvblk(t, nil, "check", img); code != 0 || !strings.Contains(out, "2 arenas") {
		t.Fatalf("check: exit %d: %s%s", code, out, stderr)
	}
}

func TestFormatWriteReadCheckAnImage(t *testing.T) {
	img := formatted(t, "--sector-size", "512")
	data := bytes.Repeat([]byte("nvblk-sector-data"), 512*3/17+1)[:512*3]
	if code, _, stderr := nvblk(t, data, "write", img, "--lba", "10"); code != 0 {
		t.Fatalf("write: exit %d: %s", code, stderr)
	}
	code, out, stderr := nvblk(t, nil, "read", img, "--lba", "10", "--count", "3")
	if code != 0 || out != string(data) {
		t.Fatalf("read: exit %d (%s), %d bytes, equal %v", code, stderr, len(out), out == string(data))
	}
	code, out, _ = nvblk(t, nil, "read", img, "--lba", "13")
	if code != 0 || out != string(make([]byte, 512)) {
		t.Fatalf("unwritten sector: exit %d, zero %v", code, out == string(make([]byte, 512)))
	}
	if code, out, stderr := nvblk(t, nil, "check", img); code != 0 || !strings.Contains(out, "consistent") {
		t.Fatalf("check: exit %d: %s%s", code, out, stderr)
	}
}

func TestInfoJSONNamesTheGeometry(t *testing.T) {
	img := formatted(t, "--uuid", "01234567-89ab-cdef-0123-456789abcdef")
	code, out, stderr := nvblk(t, nil, "info", img, "--json")
	if code != 0 {
		t.Fatalf("info: exit %d: %s", code, stderr)
	}
	var info imageInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("info --json is not JSON: %v\n%s", err, out)
	}
	if info.UUID != "01234567-89ab-cdef-0123-456789abcdef" || info.SectorSize != 4096 || info.Version != "1.1" ||
		len(info.Arenas) != 1 || info.NumSectors != uint64(info.Arenas[0].ExternalNLBA) || info.RawSize != 32<<20 {
		t.Fatalf("info: %+v", info)
	}
}

func TestCheckReportsADamagedInfoBlockAndRepairsIt(t *testing.T) {
	img := formatted(t)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff}, 4096+300)
	f.Close()
	code, out, _ := nvblk(t, nil, "check", img)
	if code != 1 || !strings.Contains(out, "info") || !strings.Contains(out, "INCONSISTENT") {
		t.Fatalf("check of a damaged image: exit %d:\n%s", code, out)
	}
	code, out, _ = nvblk(t, nil, "check", img, "--repair", "--json")
	if code != 0 || !strings.Contains(out, `"repaired": true`) {
		t.Fatalf("check --repair: exit %d:\n%s", code, out)
	}
	if code, out, _ := nvblk(t, nil, "check", img); code != 0 {
		t.Fatalf("check after repair: exit %d:\n%s", code, out)
	}
}

func TestWrongArgumentsAreUsageErrors(t *testing.T) {
	img := formatted(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"format without file", []string{"format"}, "missing FILE"},
		{"format of a new file without size", []string{"format", img + ".new"}, "--size"},
		{"format with a bad size", []string{"format", img + ".new", "--size", "lots"}, "size"},
		{"format with a bad sector size", []string{"format", img + ".new", "--size", "32M", "--sector-size", "1000"}, "sector-size"},
		{"format with a bad uuid", []string{"format", img + ".new", "--size", "32M", "--uuid", "xyz"}, "uuid"},
		{"format with a bad version", []string{"format", img + ".new", "--size", "32M", "--version", "3"}, "version"},
		{"grow without size", []string{"grow", img}, "--size"},
		{"grow that shrinks", []string{"grow", img, "--size", "16M"}, "cannot shrink"},
		{"grow by less than an arena", []string{"grow", img, "--size", "40M"}, "another arena needs"},
		{"format with no free blocks", []string{"format", img + ".new", "--size", "32M", "--free-blocks", "0"}, "--free-blocks 0"},
		{"format with too many free blocks", []string{"format", img + ".new", "--size", "32M", "--free-blocks", "70000"}, "want 1 to 65536"},
		{"read without lba", []string{"read", img}, "--lba"},
		{"read of zero sectors", []string{"read", img, "--lba", "0", "--count", "0"}, "count"},
		{"two files", []string{"info", img, img}, "unexpected"},
		{"unknown flag", []string{"info", img, "--colour"}, "flag provided but not defined"},
		{"bad durability", []string{"write", img, "--lba", "0", "--durability", "maybe"}, "durability"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := nvblk(t, nil, c.args...)
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 mentioning %q", code, stderr, c.want)
			}
			if _, err := os.Stat(img + ".new"); err == nil {
				t.Fatal("a usage error created a file")
			}
		})
	}
}

func TestFailuresLeaveTheFileUntouched(t *testing.T) {
	img := formatted(t)
	small := filepath.Join(t.TempDir(), "small.img")
	os.WriteFile(small, make([]byte, 1<<20), 0o644)
	blank := filepath.Join(t.TempDir(), "blank.img")
	os.WriteFile(blank, make([]byte, 32<<20), 0o644)
	cases := []struct {
		name  string
		file  string
		stdin []byte
		args  []string
		want  string
	}{
		{"format over an existing BTT", img, nil, []string{"format", img}, "--force"},
		{"format with a different size", img, nil, []string{"format", img, "--size", "64M", "--force"}, "exists with"},
		{"write of a partial sector", img, make([]byte, 4097), []string{"write", img, "--lba", "0"}, "whole"},
		{"write of nothing", img, nil, []string{"write", img, "--lba", "0"}, "whole"},
		{"write past the end", img, make([]byte, 8192), []string{"write", img, "--lba", "8000"}, "past the end"},
		{"read past the end", img, nil, []string{"read", img, "--lba", "7000", "--count", "2000"}, "past the end"},
		{"info of a file too small", small, nil, []string{"info", small}, "minimum"},
		{"check of a file with no BTT", blank, nil, []string{"check", blank}, "no BTT"},
		{"write to a file with no BTT", blank, make([]byte, 4096), []string{"write", blank, "--lba", "0"}, "no BTT"},
		{"info of a missing file", img + ".missing", nil, []string{"info", img + ".missing"}, "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var before [32]byte
			if _, err := os.Stat(c.file); err == nil {
				before = fileHash(t, c.file)
			}
			code, _, stderr := nvblk(t, c.stdin, c.args...)
			if code != 1 || !strings.Contains(stderr, c.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("exit %d, stderr %q; want exit 1 and one line mentioning %q", code, stderr, c.want)
			}
			if _, err := os.Stat(c.file); err == nil && fileHash(t, c.file) != before {
				t.Fatal("the file changed")
			}
		})
	}
}

func TestABusyImageNamesItsHolder(t *testing.T) {
	img := formatted(t)
	m, err := pmem.Open(img, pmem.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	code, _, stderr := nvblk(t, make([]byte, 4096), "write", img, "--lba", "0")
	if code != 1 || !strings.Contains(stderr, "pid") {
		t.Fatalf("write to a claimed image: exit %d, stderr %q", code, stderr)
	}
}

func TestHelpListsEveryCommand(t *testing.T) {
	code, out, _ := nvblk(t, nil, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for name := range commands {
		if !strings.Contains(out, "  "+name+" ") {
			t.Errorf("help does not list %q:\n%s", name, out)
		}
		code, sub, _ := nvblk(t, nil, "help", name)
		if code != 0 || !strings.Contains(sub, "usage: nvblk "+name) {
			t.Errorf("help %s: exit %d\n%s", name, code, sub)
		}
	}
}
