package vhosttest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// QSDPath is where Debian's qemu-utils installs qemu-storage-daemon.
const QSDPath = "/usr/bin/qemu-storage-daemon"

// QSDOptions describe a qemu-storage-daemon vhost-user-blk export.
type QSDOptions struct {
	Size     int64 // of the fresh raw image, in bytes
	ReadOnly bool
	Queues   int // num-queues; 1 when zero
}

// StartQSD exports a fresh raw image with qemu-storage-daemon's
// vhost-user-blk export (libvhost-user + QEMU's virtio-blk handler), the
// peer the tests hold nvblk against, and returns its socket and image. It
// returns once the daemon accepts connections; the daemon is killed and,
// if the test failed, its output logged when the test ends.
func StartQSD(t testing.TB, o QSDOptions) (sock, img string) {
	t.Helper()
	if _, err := os.Stat(QSDPath); err != nil {
		t.Fatalf("qemu-storage-daemon not installed (%v): run scripts/install-deps.sh", err)
	}
	dir := t.TempDir()
	img, sock = filepath.Join(dir, "disk.img"), filepath.Join(dir, "qsd.sock")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, o.Size); err != nil {
		t.Fatal(err)
	}
	writable := "on"
	if o.ReadOnly {
		writable = "off"
	}
	cmd := exec.Command(QSDPath,
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--export", fmt.Sprintf("type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=%s,writable=%s,num-queues=%d",
			sock, writable, max(o.Queues, 1)))
	// Output goes to a file, read only once the daemon is gone.
	logPath := filepath.Join(dir, "qsd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() string {
		cmd.Process.Kill()
		<-exited
		b, _ := os.ReadFile(logPath)
		return string(b)
	}
	t.Cleanup(func() {
		if out := stop(); t.Failed() {
			t.Logf("qemu-storage-daemon output:\n%s", out)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if Listening(sock) {
			return sock, img
		}
		select {
		case <-exited:
			t.Fatalf("qemu-storage-daemon exited: %s", stop())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-storage-daemon is not listening on %s after 10 s", sock)
		}
	}
}

// Listening reports whether a unix socket bound at path is listening. A
// server's socket file appears at bind(2), a moment before listen(2): a
// client that dials in between is refused. Reading /proc/net/unix tells
// without connecting, which a one-client server such as libvhost-user's
// would take for its front-end.
func Listening(path string) bool {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return false
	}
	defer f.Close()
	// Num RefCount Protocol Flags Type St Inode Path; Flags has
	// __SO_ACCEPTCON (0x10000) once listen(2) ran.
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 8 && fields[7] == path && fields[3] == "00010000" {
			return true
		}
	}
	return false
}
