// Package vhostblk runs real Linux guests against `nvblk serve` over
// vhost-user-blk: QEMU connects to nvblk's socket and shares the guest's
// memory, the guest's virtio_blk driver does I/O, files, even its root
// file system on the disk, and the host checks the BTT image afterwards
// with the nvblk image tools.
package vhostblk

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var (
	kit *guest.Kit
	// nvblkBin is the CLI under test; cliErr says why it could not be
	// built, reported by each test when it first needs the CLI.
	nvblkBin string
	cliErr   error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nvblk-vhostblk-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kit, err = guest.NewKit(dir)
	if err != nil {
		// Not a skip: a box without QEMU or a kernel cannot vouch for nvblk.
		fmt.Fprintf(os.Stderr, "FAIL: guest kit: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	nvblkBin = filepath.Join(dir, "nvblk")
	if out, err := exec.Command("go", "build", "-o", nvblkBin, "github.com/nvblk/nvblk/cmd/nvblk").CombinedOutput(); err != nil {
		cliErr = fmt.Errorf("build nvblk CLI: %w\n%s", err, out)
	}
	code := m.Run()
	if guest.Keep() {
		fmt.Fprintf(os.Stderr, "kept kernel %s and base initramfs %s\n", kit.Kernel, kit.Initramfs)
	} else {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// nvblk runs the CLI with stdin and returns stdout; a non-zero exit is an
// error carrying stderr.
func nvblk(t *testing.T, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	cmd := exec.Command(nvblkBin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("nvblk %v: %w\n%s", args, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// image is a freshly formatted BTT image and what nvblk info says of it.
type image struct {
	Path       string
	SectorSize int    `json:"sector_size"`
	NumSectors uint64 `json:"num_sectors"`
	UUID       string `json:"uuid"`
}

func formatImage(t *testing.T, size string, sectorSize int) image {
	t.Helper()
	img := image{Path: filepath.Join(t.TempDir(), "nvblk.img")}
	if _, err := nvblk(t, nil, "format", img.Path, "--size", size, "--sector-size", strconv.Itoa(sectorSize)); err != nil {
		t.Fatal(err)
	}
	out, err := nvblk(t, nil, "info", img.Path, "--json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &img); err != nil {
		t.Fatalf("nvblk info --json: %v\n%s", err, out)
	}
	if img.SectorSize != sectorSize || img.NumSectors == 0 {
		t.Fatalf("nvblk info after format: %+v, want %d-byte sectors", img, sectorSize)
	}
	return img
}

// readImage is `nvblk read` of count sectors from lba: the host's view of
// the disk, through the BTT map.
func readImage(t *testing.T, img image, lba uint64, count int) []byte {
	t.Helper()
	out, err := nvblk(t, nil, "read", img.Path, "--lba", strconv.FormatUint(lba, 10), "--count", strconv.Itoa(count))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != count*img.SectorSize {
		t.Fatalf("nvblk read %d sectors from lba %d: %d bytes, want %d", count, lba, len(out), count*img.SectorSize)
	}
	return out
}

func checkImage(t *testing.T, img image) {
	t.Helper()
	if out, err := nvblk(t, nil, "check", img.Path); err != nil {
		t.Fatalf("nvblk check after the guest: %v\n%s", err, out)
	}
}

// backend is a vhost-user-blk server process: `nvblk serve` or
// qemu-storage-daemon.
type backend struct {
	name   string
	socket string
	cmd    *exec.Cmd
	mu     sync.Mutex
	log    bytes.Buffer // stdout and stderr
	exited chan struct{}
	err    error
}

func (b *backend) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.log.Write(p)
}

func (b *backend) output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.log.String()
}

// serve starts `nvblk serve` on img and returns once its socket listens,
// so that QEMU never races it. It is stopped (SIGTERM, then SIGKILL) when
// the test ends, and its log is kept in the test log if the test fails.
func serve(t *testing.T, img image, extra ...string) *backend {
	t.Helper()
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	args := append([]string{"serve", "--socket-path", sock, "--blk-file", img.Path}, extra...)
	return startBackend(t, "nvblk serve", sock, exec.Command(nvblkBin, args...), "# attach ")
}

// storageDaemon starts QEMU's own vhost-user-blk export of a raw file.
// discard=unmap makes a discard punch a hole, which reads as zeroes as a
// discarded BTT sector does; QEMU's default (ignore) drops discards, which
// virtio allows but the I/O story does not expect.
func storageDaemon(t *testing.T, raw string, queues int) *backend {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qsd.sock")
	cmd := exec.Command("/usr/bin/qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=f,discard=unmap,filename="+raw,
		"--export", fmt.Sprintf("type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=%s,writable=on,num-queues=%d", sock, queues))
	return startBackend(t, "qemu-storage-daemon", sock, cmd, "")
}

// startBackend runs cmd and waits until it is ready: ready is a line it
// prints once listening, or, when empty, its socket accepting connections
// (the probe connection is one the daemon sees close at once).
func startBackend(t *testing.T, name, sock string, cmd *exec.Cmd, ready string) *backend {
	t.Helper()
	b := &backend{name: name, socket: sock, cmd: cmd, exited: make(chan struct{})}
	t.Logf("%s command line: %s", name, strings.Join(cmd.Args, " "))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = b
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			fmt.Fprintln(b, sc.Text())
			if ready != "" && !signalled && strings.HasPrefix(sc.Text(), ready) {
				signalled = true
				close(listening)
			}
		}
		_, _ = io.Copy(b, stdout)
		b.err = cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(func() {
		b.stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, b.output())
		}
	})
	deadline := time.After(30 * time.Second)
	for {
		if ready == "" {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				return b
			}
		}
		select {
		case <-listening:
			return b
		case <-b.exited:
			t.Fatalf("%s exited before listening: %v\n%s", name, b.err, b.output())
		case <-deadline:
			t.Fatalf("%s not listening on %s after 30 s\n%s", name, sock, b.output())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for the exit, killing after 10 s; it
// returns the process's exit error.
func (b *backend) stop() error {
	select {
	case <-b.exited:
		return b.err
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.exited
		return fmt.Errorf("%s ignored SIGTERM for 10 s: %w", b.name, b.err)
	}
	return b.err
}

// stopClean stops the backend and fails the test unless it shut down
// cleanly: nvblk flushes and closes the image on SIGTERM, and only then
// may the image tools open it.
func (b *backend) stopClean(t *testing.T) {
	t.Helper()
	if err := b.stop(); err != nil {
		t.Fatalf("%s did not shut down cleanly: %v\n%s", b.name, err, b.output())
	}
}

// machineConfig attaches the backend's socket as a vhost-user-blk disk
// with queues virtqueues. Guest RAM is a shared memfd of the same size as
// -m, which the back end maps.
func machineConfig(b *backend, cpus, queues int, steps []agentproto.Step) guest.Config {
	return guest.Config{
		MemoryMiB:    256,
		CPUs:         cpus,
		SharedMemory: true,
		Args: []string{
			"-chardev", "socket,id=c0,path=" + b.socket,
			"-device", fmt.Sprintf("vhost-user-blk-pci,chardev=c0,num-queues=%d", queues),
		},
		Steps: steps,
	}
}

// run boots a guest against the backend, waits for the agent to power
// off, and fails the test on any kernel trouble on the console except
// lines matching allow.
func run(t *testing.T, cfg guest.Config, allow ...*regexp.Regexp) *guest.Result {
	t.Helper()
	m := guest.Start(t, kit, cfg)
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: agent up after %v (kernel uptime %.1f s), whole run %v",
		res.BootToAgent.Round(time.Millisecond), res.GuestUptime, res.Wall.Round(time.Millisecond))
	checkConsole(t, m, allow...)
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}
	return res
}

func checkConsole(t *testing.T, m *guest.Machine, allow ...*regexp.Regexp) {
	t.Helper()
	if bad := guest.KernelTrouble(m.Console(), allow...); len(bad) > 0 {
		t.Errorf("guest kernel reported trouble:\n%s", strings.Join(bad, "\n"))
	}
}

func decode[T any](t *testing.T, res *guest.Result, i int) T {
	t.Helper()
	var v T
	if err := res.Decode(i, &v); err != nil {
		t.Fatal(err)
	}
	return v
}
