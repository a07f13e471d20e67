package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/internal/diskmove"
)

// TestMoveCopiesAServedDiskIntoAnIncomingServe is the operator's flow
// without a guest: serve --incoming on the destination, nvblk move on the
// source (no front-end attached, so the switch-over is at once), then both
// images read alike and the destination's serve says the disk arrived.
func TestMoveCopiesAServedDiskIntoAnIncomingServe(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, img := range []string{src, dst} {
		if code, _, stderr := nvblk(t, nil, "format", img, "--size", "32M", "--sector-size", "4096"); code != 0 {
			t.Fatalf("format: %s", stderr)
		}
	}
	data := bytes.Repeat([]byte("moved with its guest, sector by sector. "), 4096*64/40+1)[:4096*64]
	if code, _, stderr := nvblk(t, data, "write", src, "--lba", "100"); code != 0 {
		t.Fatalf("write: %s", stderr)
	}
	sockA, sockB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	incoming := "nbd+unix:///?socket=" + filepath.Join(dir, "incoming.sock")
	stopA, _, _ := servingInProcess(t, "serve", "--socket-path", sockA, "--blk-file", src, "--log-level", "error")
	stopB, _, logsB := servingInProcess(t, "serve", "--socket-path", sockB, "--blk-file", dst, "--incoming", incoming)

	code, stdout, stderr := nvblk(t, nil, "move", "--socket-path", sockA, "--to", incoming, "--json")
	if code != 0 {
		t.Fatalf("move: exit %d: %s", code, stderr)
	}
	var st diskmove.Stats
	if err := json.Unmarshal([]byte(stdout), &st); err != nil || st.SectorsSent < st.Sectors || st.Sectors == 0 {
		t.Fatalf("move --json: %+v, %v\n%s", st, err, stdout)
	}
	if stopA() != 0 || stopB() != 0 {
		t.Fatal("a serve exited non-zero")
	}
	if !strings.Contains(logsB.String(), "incoming disk arrived") {
		t.Errorf("the destination's serve never said the disk arrived:\n%s", logsB.String())
	}
	_, a, _ := nvblk(t, nil, "read", src, "--lba", "0", "--count", "7000")
	_, b, _ := nvblk(t, nil, "read", dst, "--lba", "0", "--count", "7000")
	if a != b || !strings.Contains(a, string(data[:4096])) {
		t.Fatal("the destination's image does not read as the source's")
	}
}

func TestMoveAndIncomingRefuseWrongArguments(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "s.sock")
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"move without --to", []string{"move", "--socket-path", sock}, "--to is required"},
		{"move to a URL that is not NBD", []string{"move", "--socket-path", sock, "--to", "http://host/x"}, "want nbd or nbd+unix"},
		{"move without a serve", []string{"move", "--to", "nbd://host"}, "--socket-path"},
		{"move to TLS", []string{"move", "--socket-path", sock, "--to", "nbds://host/x"}, "TLS"},
		{"incoming read-only", []string{"serve", "--socket-path", sock, "--blk-file", img, "--read-only", "--incoming", "nbd://127.0.0.1:1"}, "--read-only"},
		{"incoming on a bad URI", []string{"serve", "--socket-path", sock, "--blk-file", img, "--incoming", "tcp:1.2.3.4:5"}, "--incoming"},
		{"incoming with --disk", []string{"serve", "--disk", "name=a,blk-file=" + img + ",socket-path=" + sock, "--incoming", "nbd://127.0.0.1:1"}, "--incoming"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := nvblk(t, nil, c.args...)
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 mentioning %q", code, stderr, c.want)
			}
		})
	}
}
