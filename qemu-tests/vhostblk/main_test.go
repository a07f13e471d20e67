// Package vhostblk runs real Linux guests against `nvblk serve` over
// vhost-user-blk: QEMU connects to nvblk's socket and shares the guest's
// memory, the guest's virtio_blk driver does I/O, files, even its root
// file system on the disk, and the host checks the BTT image afterwards
// with the nvblk image tools.
package vhostblk

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "nvblk-vhostblk-")) }

// serve starts `nvblk serve` on img, on a socket of its own.
func serve(t *testing.T, img guest.Image, extra ...string) *guest.Backend {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	return suite.Serve(t, "nvblk serve", sock, img.Path, extra...)
}

// storageDaemon starts QEMU's own vhost-user-blk export of a raw file.
// discard=unmap makes a discard punch a hole, which reads as zeroes as a
// discarded BTT sector does; QEMU's default (ignore) drops discards, which
// virtio allows but the I/O story does not expect.
func storageDaemon(t *testing.T, raw string, queues int) *guest.Backend {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qsd.sock")
	cmd := exec.Command("/usr/bin/qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=f,discard=unmap,filename="+raw,
		"--export", fmt.Sprintf("type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=%s,writable=on,num-queues=%d", sock, queues))
	return guest.StartBackend(t, "qemu-storage-daemon", sock, cmd, "")
}

// machineConfig attaches the backend's socket as a vhost-user-blk disk
// with queues virtqueues. Guest RAM is a shared memfd of the same size as
// -m, which the back end maps.
func machineConfig(b *guest.Backend, cpus, queues int, steps []agentproto.Step) guest.Config {
	return guest.Config{
		MemoryMiB:    256,
		CPUs:         cpus,
		SharedMemory: true,
		Args: []string{
			"-chardev", "socket,id=c0,path=" + b.Socket,
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
	m := guest.Start(t, suite.Kit, cfg)
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
