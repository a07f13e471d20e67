package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/tmpfstest"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// soakBench runs `nvblk bench --continue-on-error` against sock for d in
// the background and returns its result when it ends.
func soakBench(t *testing.T, sock, rw string, d time.Duration, extra ...string) <-chan benchJSON {
	t.Helper()
	res := make(chan benchJSON, 1)
	go func() {
		defer close(res)
		args := append([]string{"bench", "--socket-path", sock, "--rw", rw, "--iodepth", "8",
			"--time", d.String(), "--continue-on-error", "--json"}, extra...)
		code, out, stderr := nvblk(t, nil, args...)
		var j benchJSON
		if err := json.Unmarshal([]byte(out), &j); code != exitOK || err != nil {
			t.Errorf("bench: exit %d, %v: %s%s", code, err, out, stderr)
			return
		}
		res <- j
	}()
	return res
}

// fillFilesystem writes a file in dir until the filesystem holding it is
// full, and returns its path.
func fillFilesystem(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return path
		}
	}
}

// ioOnce writes data at sector through a new connection and reads it back.
func ioOnce(sock string, sector uint64, data []byte) error {
	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, ioTimeout); err != nil {
		return err
	}
	back := make([]byte, len(data))
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: sector, Data: back}, ioTimeout); err != nil {
		return err
	}
	if !bytes.Equal(back, data) {
		return errors.New("read back other data than written")
	}
	return nil
}

// The soak of a full host filesystem: nvblk serve under random writes on
// an image whose filesystem fills up mid-run and then frees space. The
// image's blocks were allocated at format, so the full filesystem costs no
// write at all: none fails, serve never exits, a write made while it is
// full lands, and the BTT checks consistent afterwards.
func TestSoakServeUnderRandomWritesWhileItsFilesystemFillsAndFrees(t *testing.T) {
	dir := tmpfstest.Mount(t, "48m")
	img := filepath.Join(dir, "disk.img")
	if code, _, stderr := nvblk(t, nil, "format", img, "--size", "32M"); code != 0 {
		t.Fatalf("format: exit %d: %s", code, stderr)
	}
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	cmd := exec.Command(binary(t), "serve", "--socket-path", sock, "--blk-file", img, "--num-queues", "2")
	exited, out := serveProcess(t, cmd)
	waitListening(t, out, exited)

	// The bench keeps to the first 16 MiB; the write made while the
	// filesystem is full goes past it (LBA 6000), from a second front-end
	// served beside the bench's, so nothing overwrites it.
	bench := soakBench(t, sock, "randwrite", 3*time.Second, "--size-limit", "16M")
	time.Sleep(500 * time.Millisecond)
	filler := fillFilesystem(t, dir)
	whileFull := bytes.Repeat([]byte("written while the host filesystem was full "), 4096/43+1)[:4096]
	if err := ioOnce(sock, 6000*8, whileFull); err != nil {
		t.Errorf("write and read back while the filesystem is full: %v", err)
	}
	time.Sleep(time.Second)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	j, ok := <-bench
	if !ok {
		t.FailNow()
	}
	t.Logf("bench while the filesystem filled and freed: %d writes completed, %d failed", j.Requests, j.Failed)
	if j.Requests == 0 || j.Failed != 0 {
		t.Errorf("bench: %d writes completed, %d failed; want all of them to land", j.Requests, j.Failed)
	}
	select {
	case <-exited:
		t.Fatalf("serve exited during the run:\n%s", out)
	default:
	}
	terminate(t, cmd, exited, out)
	if code, got, stderr := nvblk(t, nil, "read", img, "--lba", "6000"); code != 0 || got != string(whileFull) {
		t.Errorf("the write made while full: read exit %d (%s), equal %v", code, stderr, got == string(whileFull))
	}
	if code, stdout, stderr := nvblk(t, nil, "check", img); code != 0 {
		t.Errorf("check: exit %d: %s%s", code, stdout, stderr)
	}
}

// The soak of a truncated image: another process cuts the image in half
// under a running serve and random reads and writes. The requests that
// touch what is gone fail (IOERR), nothing else does: serve never exits, a
// new front-end is still served, and SIGTERM still ends serve cleanly;
// then check names the damage instead of crashing.
func TestSoakServeUnderRandomIOWhileItsImageIsTruncated(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	if code, _, stderr := nvblk(t, nil, "format", img, "--size", "64M"); code != 0 {
		t.Fatalf("format: exit %d: %s", code, stderr)
	}
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	cmd := exec.Command(binary(t), "serve", "--socket-path", sock, "--blk-file", img, "--num-queues", "2")
	exited, out := serveProcess(t, cmd)
	waitListening(t, out, exited)

	bench := soakBench(t, sock, "randrw", 2*time.Second)
	time.Sleep(500 * time.Millisecond)
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	j, ok := <-bench
	if !ok {
		t.FailNow()
	}
	t.Logf("bench while the image was cut in half: %d requests completed, %d failed", j.Requests, j.Failed)
	if j.Requests == 0 || j.Failed == 0 {
		t.Errorf("bench: %d requests completed, %d failed; want both: the ones before the cut land, the ones into it fail", j.Requests, j.Failed)
	}
	select {
	case <-exited:
		t.Fatalf("serve exited during the run:\n%s", out)
	default:
	}
	// A new front-end is served: its handshake completes and a request
	// gets an answer, whatever its status.
	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatalf("a new front-end after the truncation: %v", err)
	}
	r := &frontend.Request{Type: virtio.BlkTIn, Sector: 0, Data: make([]byte, 4096)}
	if err := d.Queues[0].Do(r, ioTimeout); err != nil && r.Status != virtio.BlkSIOErr {
		t.Errorf("a read after the truncation got no answer: %v", err)
	}
	d.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("no exit after SIGTERM:\n%s", out)
	}
	t.Logf("serve exit %d after SIGTERM", cmd.ProcessState.ExitCode())
	if code, stdout, stderr := nvblk(t, nil, "check", img); code == exitOK || code < 0 {
		t.Errorf("check of the truncated image: exit %d, want a failure naming the damage: %s%s", code, stdout, stderr)
	} else {
		t.Logf("check: exit %d: %s%s", code, stdout, stderr)
	}
}
