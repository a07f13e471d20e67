package main

import (
	"bytes"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// The operator grows a disk whose guest is attached: the front-end is sent
// the config change, reads the new capacity, and writes past the old end;
// the image afterwards has the new arena, the data, and checks clean.
func TestGrowOfAServedDiskTellsTheAttachedFrontEnd(t *testing.T) {
	img := formatted(t)
	dir := t.TempDir()
	sock, ctl := filepath.Join(dir, "nvblk.sock"), filepath.Join(dir, "nvblk.ctl")
	stop, _, stderr := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img,
		"--control-socket", ctl, "--log-level", "warn")
	d, err := frontend.Connect(sock, frontend.Options{BackendReq: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	before := d.Capacity()
	grown := make(chan string, 1)
	go func() {
		code, out, errOut := nvblk(t, nil, "grow", "--control-socket", ctl, "--size", "80M")
		if code != 0 {
			out = "exit " + errOut
		}
		grown <- out
	}()
	if err := d.WaitConfigChange(30 * time.Second); err != nil {
		t.Fatalf("config change: %v (serve: %s)", err, stderr)
	}
	if out := <-grown; !strings.Contains(out, "1 front-end(s) told") {
		t.Fatalf("nvblk grow: %s", out)
	}
	after := d.Capacity()
	if after <= before {
		t.Fatalf("capacity %d sectors after the config change, was %d", after, before)
	}
	last := after - 8 // the new last 4 KiB sector
	data := bytes.Repeat([]byte("past the old end"), 256)
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: last, Data: data}, 10*time.Second); err != nil {
		t.Fatalf("write past the old capacity: %v", err)
	}
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTFlush}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if code := stop(); code != 0 {
		t.Fatalf("serve exit %d: %s", code, stderr)
	}
	if code, out, _ := nvblk(t, nil, "read", img, "--lba", strconv.FormatUint(last/8, 10)); code != 0 || out != string(data) {
		t.Fatalf("read of the new last LBA: exit %d, same %v", code, out == string(data))
	}
	if code, out, errOut := nvblk(t, nil, "check", img); code != 0 || !strings.Contains(out, "2 arenas") {
		t.Fatalf("check: exit %d: %s%s", code, out, errOut)
	}
}

func TestGrowOfAServedDiskRefusesNonsenseSizes(t *testing.T) {
	img := formatted(t)
	dir := t.TempDir()
	sock, ctl := filepath.Join(dir, "nvblk.sock"), filepath.Join(dir, "nvblk.ctl")
	servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--control-socket", ctl, "--log-level", "error")
	for _, tc := range []struct {
		size int64
		want string
	}{
		{-1, "want the image's new size"},
		{1 << 60, "want the image's new size"},
		{32 << 20, "no room"}, // the size it has: no new arena fits
		{16 << 20, "does not shrink"},
	} {
		if _, err := control.Do(ctl, control.Request{Cmd: "grow", Size: tc.size}, 10*time.Second); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("grow to %d: %v, want an error saying %q", tc.size, err, tc.want)
		}
	}
}
