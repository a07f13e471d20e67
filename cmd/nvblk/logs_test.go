package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// logMessages returns the msg of every JSON log line.
func logMessages(t *testing.T, logs string) []string {
	t.Helper()
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec struct{ Msg, Level string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		msgs = append(msgs, rec.Level+": "+rec.Msg)
	}
	return msgs
}

// TestServeLogsEachConnectionEventOnceAndNoRequests: at the default level a
// guest's life is a handful of lines (connected, handshake done, queue
// started, queue stopped, disconnected) however many requests it makes.
func TestServeLogsEachConnectionEventOnceAndNoRequests(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, _, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--log-format", "json")
	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for i := 0; i < 200; i++ {
		if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: uint64(8 * i), Data: buf}, ioTimeout); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "disconnected"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no disconnect logged:\n%s", logs)
		}
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve: exit %d", code)
	}
	msgs := logMessages(t, logs.String())
	want := []string{
		"info: serving vhost-user-blk",
		"info: attach with these QEMU options",
		"info: control socket listening",
		"info: vhost-user front-end connected",
		"info: vhost-user handshake done",
		"info: vhost: queue started",
		"info: vhost: queue stopped",
		"info: vhost-user front-end disconnected",
		"info: signal received: stopped serving",
		"info: image flushed and closed",
	}
	if strings.Join(msgs, "\n") != strings.Join(want, "\n") {
		t.Errorf("log messages:\n%s\nwant:\n%s", strings.Join(msgs, "\n"), strings.Join(want, "\n"))
	}
}

// TestServeLogsTextByDefaultAndProtocolDetailAtDebug: text unless asked
// for JSON; --log-level debug adds a line per vhost-user message, still
// none per I/O request.
func TestServeLogsTextByDefaultAndProtocolDetailAtDebug(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, _, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--log-level", "debug")
	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := strings.Count(logs.String(), "\n")
	for i := 0; i < 50; i++ {
		if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTFlush}, ioTimeout); err != nil {
			t.Fatal(err)
		}
	}
	if after := strings.Count(logs.String(), "\n"); after != before {
		t.Errorf("%d log lines for 50 requests", after-before)
	}
	d.Close()
	stop()
	out := logs.String()
	if !strings.Contains(out, `level=info msg="vhost-user front-end connected"`) || !strings.Contains(out, "level=debug") ||
		!strings.Contains(out, "request=SET_MEM_TABLE") {
		t.Errorf("text debug log:\n%s", out)
	}
}

// TestServeStartupLineNamesTheMedium: the "serving" line says what the
// image is and what its durability rests on — kind, MAP_SYNC, the mode
// auto (or the flag) resolved to, and the cache-line write-back — so a
// pmem host's log shows whether DAX was really had. An image on an
// ordinary filesystem has no MAP_SYNC, resolves auto to flush and writes
// no cache line back; sync says so too.
func TestServeStartupLineNamesTheMedium(t *testing.T) {
	for _, tc := range []struct{ flag, durability string }{{"auto", "flush"}, {"sync", "sync"}} {
		t.Run(tc.flag, func(t *testing.T) {
			img := formatted(t)
			sock := filepath.Join(t.TempDir(), "nvblk.sock")
			stop, _, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img,
				"--durability", tc.flag, "--log-format", "json")
			stop()
			var line map[string]any
			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				if strings.Contains(l, `"serving vhost-user-blk"`) {
					if err := json.Unmarshal([]byte(l), &line); err != nil {
						t.Fatalf("%v: %q", err, l)
					}
				}
			}
			want := map[string]any{"kind": "file", "map_sync": false, "durability": tc.durability, "write_back": "none"}
			for k, v := range want {
				if line[k] != v {
					t.Errorf("start-up line field %s = %v, want %v\n%s", k, line[k], v, logs)
				}
			}
		})
	}
	// In text form, as an operator reads it.
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, _, logs := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img)
	stop()
	if !strings.Contains(logs.String(), "kind=file map_sync=false") || !strings.Contains(logs.String(), "write_back=none") {
		t.Errorf("text start-up line lacks the medium:\n%s", logs)
	}
}
