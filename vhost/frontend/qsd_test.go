package frontend

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

const qsdPath = "/usr/bin/qemu-storage-daemon"

// startQSD exports a fresh raw image with qemu-storage-daemon's
// vhost-user-blk export (libvhost-user) and returns its socket and image.
func startQSD(t *testing.T, size int64) (sock, img string) {
	t.Helper()
	if _, err := os.Stat(qsdPath); err != nil {
		t.Fatalf("qemu-storage-daemon not installed (%v): run scripts/install-deps.sh", err)
	}
	dir := t.TempDir()
	img, sock = filepath.Join(dir, "disk.img"), filepath.Join(dir, "qsd.sock")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(qsdPath,
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--export", "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path="+sock+",writable=on")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("qemu-storage-daemon output:\n%s", stderr.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return sock, img
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-storage-daemon did not create %s: %s", sock, stderr.String())
		}
	}
}

func TestQSDWriteReadFlush(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"plain", Options{}},
		{"indirect+eventidx+segments", Options{Indirect: true, EventIdx: true, SegSize: 1024}},
		{"memslots+2regions", Options{MemSlots: true, Regions: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 8 << 20
			sock, img := startQSD(t, size)
			d, err := Connect(sock, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if got := d.Capacity(); got != size/SectorSize {
				t.Fatalf("capacity %d sectors, want %d", got, size/SectorSize)
			}
			q := d.Queues[0]
			data := bytes.Repeat([]byte("nvblk-qsd"), 8192)[:64<<10]
			if err := q.Do(&Request{Type: TypeOut, Sector: 8, Data: data}, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := q.Do(&Request{Type: TypeFlush}, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			rd := &Request{Type: TypeIn, Sector: 8, Data: got}
			if err := q.Do(rd, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("read back differs from written data")
			}
			if rd.Written != uint32(len(data))+1 {
				t.Errorf("IN used len %d, want %d", rd.Written, len(data)+1)
			}
			file, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(file[8*SectorSize:8*SectorSize+len(data)], data) {
				t.Fatal("image file does not hold the written data")
			}
		})
	}
}
