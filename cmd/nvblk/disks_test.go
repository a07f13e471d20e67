package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

func TestDiskSpecParser(t *testing.T) {
	base := "name=vm1,blk-file=/i/vm1.img,socket-path=/run/vm1.sock"
	def := blkserve.Spec{Name: "vm1", Image: "/i/vm1.img", Socket: "/run/vm1.sock", NumQueues: uint16(defaultServeQueues)}
	with := func(f func(*blkserve.Spec)) blkserve.Spec { s := def; f(&s); return s }
	for _, c := range []struct {
		name, spec string
		want       blkserve.Spec
		err        string
	}{
		{"the three required keys take serve's defaults", base, def, ""},
		{"keys in any order", "socket-path=/run/vm1.sock,blk-file=/i/vm1.img,name=vm1", def, ""},
		{"num-queues", base + ",num-queues=2", with(func(s *blkserve.Spec) { s.NumQueues = 2 }), ""},
		{"read-only on", base + ",read-only=on", with(func(s *blkserve.Spec) { s.ReadOnly = true }), ""},
		{"read-only off", base + ",read-only=off", def, ""},
		{"serial", base + ",serial=SER-1", with(func(s *blkserve.Spec) { s.Serial = "SER-1" }), ""},
		{"durability", base + ",durability=sync", with(func(s *blkserve.Spec) { s.Durability = pmem.DurabilitySync }), ""},
		{"a doubled comma is a comma in a value", "name=vm1,blk-file=/i/a,,b.img,socket-path=/run/vm1.sock",
			with(func(s *blkserve.Spec) { s.Image = "/i/a,b.img" }), ""},
		{"missing name", "blk-file=/i/vm1.img,socket-path=/s", blkserve.Spec{}, "missing name="},
		{"missing blk-file", "name=vm1,socket-path=/s", blkserve.Spec{}, "missing blk-file="},
		{"missing socket-path", "name=vm1,blk-file=/i", blkserve.Spec{}, "missing socket-path="},
		{"empty blk-file", "name=vm1,blk-file=,socket-path=/s", blkserve.Spec{}, "missing blk-file="},
		{"unknown key", base + ",queues=2", blkserve.Spec{}, `unknown key "queues"`},
		{"duplicate key", base + ",name=vm2", blkserve.Spec{}, "name given twice"},
		{"not key=value", base + ",read-only", blkserve.Spec{}, `"read-only" is not key=value`},
		{"empty element", base + ",", blkserve.Spec{}, "empty key=value"},
		{"zero queues", base + ",num-queues=0", blkserve.Spec{}, "num-queues"},
		{"too many queues", base + ",num-queues=257", blkserve.Spec{}, "want 1..256"},
		{"queues not a number", base + ",num-queues=four", blkserve.Spec{}, "num-queues"},
		{"read-only not on or off", base + ",read-only=maybe", blkserve.Spec{}, "read-only"},
		{"long serial", base + ",serial=" + strings.Repeat("s", 21), blkserve.Spec{}, "at most 20 bytes"},
		{"bad durability", base + ",durability=fast", blkserve.Spec{}, "durability"},
		{"empty durability", base + ",durability=", blkserve.Spec{}, "durability"},
		{"name with a slash", "name=a/b,blk-file=/i,socket-path=/s", blkserve.Spec{}, "name"},
		{"name with a quote", `name=a"b,blk-file=/i,socket-path=/s`, blkserve.Spec{}, "name"},
		{"name too long", "name=" + strings.Repeat("n", 65) + ",blk-file=/i,socket-path=/s", blkserve.Spec{}, "name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseDiskSpec(c.spec)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("parse %q: %v, want an error saying %q", c.spec, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("parse %q: %+v, %v; want %+v", c.spec, got, err, c.want)
			}
			// What disk add sends reads back as the same disk.
			if again, err := parseDiskSpec(formatDiskSpec(got)); err != nil || again != got {
				t.Errorf("format then parse: %+v, %v", again, err)
			}
		})
	}
}

func TestServeDiskUsageErrors(t *testing.T) {
	img := formatted(t)
	d := func(name, sock string) string { return "name=" + name + ",blk-file=" + img + ",socket-path=" + sock }
	other := formatted(t)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"with --blk-file", []string{"serve", "--disk", d("a", "a.sock"), "--blk-file", img}, "--blk-file: with --disk"},
		{"with --socket-path", []string{"serve", "--disk", d("a", "a.sock"), "--socket-path", "s"}, "--socket-path: with --disk"},
		{"with --fd", []string{"serve", "--disk", d("a", "a.sock"), "--fd", "3"}, "--fd: with --disk"},
		{"with --num-queues", []string{"serve", "--disk", d("a", "a.sock"), "--num-queues", "2"}, "num-queues="},
		{"two disks of one name", []string{"serve", "--disk", d("a", "a.sock"),
			"--disk", "name=a,blk-file=" + other + ",socket-path=b.sock"}, "two disks are named a"},
		{"two disks on one socket", []string{"serve", "--disk", d("a", "a.sock"),
			"--disk", "name=b,blk-file=" + other + ",socket-path=./a.sock"}, "is disk a's too"},
		{"one image twice", []string{"serve", "--disk", d("a", "a.sock"), "--disk", d("b", "b.sock")}, "is disk a's too"},
		{"control socket on a disk's socket", []string{"serve", "--disk", d("a", "a.sock"), "--control-socket", "a.sock"}, "a path of its own"},
		{"bad spec", []string{"serve", "--disk", "name=a"}, "missing blk-file="},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := nvblk(t, nil, c.args...)
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 saying %q", code, stderr, c.want)
			}
		})
	}
}

// fdsOf counts the open descriptors of process pid once the count has
// held still for a moment (a control connection the server has yet to
// close, a session ending).
func fdsOf(t *testing.T, pid int) int {
	t.Helper()
	count := func() int {
		ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	n, since := count(), time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && time.Since(since) < 300*time.Millisecond; time.Sleep(20 * time.Millisecond) {
		if c := count(); c != n {
			n, since = c, time.Now()
		}
	}
	return n
}

// disksOf runs `nvblk disk list --json`.
func disksOf(t *testing.T, ctl string) map[string]control.DiskInfo {
	t.Helper()
	code, out, stderr := nvblk(t, nil, "disk", "list", "--control-socket", ctl, "--json")
	var list []control.DiskInfo
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
		t.Fatalf("disk list: exit %d: %s%s", code, stderr, out)
	}
	m := map[string]control.DiskInfo{}
	for _, d := range list {
		m[d.Name] = d
	}
	return m
}

func connect(t *testing.T, sock string) *frontend.Device {
	t.Helper()
	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatalf("connect %s: %v", sock, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func write(t *testing.T, d *frontend.Device, sector uint64, data []byte) {
	t.Helper()
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, ioTimeout); err != nil {
		t.Fatal(err)
	}
}

// TestOneServeServesTwoDisksThenAThirdAddedAtRunTime is the operator's
// story: one serve started with two disks, each written by its own
// front-end into its own image; a third added at run time and written;
// the list shows the three; removing the attached third is refused, then
// forced (its front-end is dropped, its socket goes, every descriptor it
// took is closed); SIGTERM flushes and closes the other two; every image
// checks consistent and holds what its disk was given.
func TestOneServeServesTwoDisksThenAThirdAddedAtRunTime(t *testing.T) {
	fdcheck.Check(t)
	img1, img2, img3 := formatted(t), formatted(t), formatted(t)
	dir := t.TempDir()
	s1, s2, s3, ctl := filepath.Join(dir, "vm1.sock"), filepath.Join(dir, "vm2.sock"), filepath.Join(dir, "vm3.sock"), filepath.Join(dir, "nvblk.ctl")
	cmd := exec.Command(binary(t), "serve", "--control-socket", ctl, "--metrics-addr", "127.0.0.1:0", "--log-format", "json",
		"--disk", "name=vm1,blk-file="+img1+",socket-path="+s1+",num-queues=2",
		"--disk", "name=vm2,blk-file="+img2+",socket-path="+s2+",serial=second-disk,durability=sync")
	exited, out := serveProcess(t, cmd)
	waitListening(t, out, exited)
	for _, want := range []string{"chardev=vm1,num-queues=2", "chardev=vm2,num-queues=" + strconv.Itoa(int(defaultServeQueues)), "path=" + s2} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("attach text lacks %q:\n%s", want, out)
		}
	}

	one, two := bytes.Repeat([]byte("disk one "), 4096/9+1)[:4096], bytes.Repeat([]byte("disk two "), 4096/9+1)[:4096]
	d1, d2 := connect(t, s1), connect(t, s2)
	write(t, d1, 0, one)
	write(t, d2, 0, two)
	if d1.Features&virtio.BlkFFlush == 0 || d2.Features&virtio.BlkFFlush != 0 {
		t.Errorf("durability per disk: vm1 (flush) offers FLUSH %v, vm2 (sync) %v", d1.Features&virtio.BlkFFlush != 0, d2.Features&virtio.BlkFFlush != 0)
	}

	// Status shows both disks; the metrics label each sample with its disk.
	code, text, stderr := nvblk(t, nil, "status", "--control-socket", ctl)
	if code != 0 || !strings.Contains(text, "disk vm1") || !strings.Contains(text, "disk vm2") {
		t.Errorf("status: exit %d: %s%s", code, stderr, text)
	}
	var logs syncBuffer
	logs.Write([]byte(out.String()))
	m := scrape(t, logField(t, &logs, "metrics endpoint listening", "metrics"))
	if m[`nvblk_frontend_connected{disk="vm1"}`] != 1 || m[`nvblk_requests_total{disk="vm2",queue="0",op="write"}`] != 1 {
		t.Errorf("metrics by disk: vm1 connected %v, vm2 writes %v", m[`nvblk_frontend_connected{disk="vm1"}`],
			m[`nvblk_requests_total{disk="vm2",queue="0",op="write"}`])
	}

	pid := cmd.Process.Pid
	before := fdsOf(t, pid)
	code, text, stderr = nvblk(t, nil, "disk", "add", "--control-socket", ctl, "name=vm3,blk-file="+img3+",socket-path="+s3+",num-queues=1")
	if code != 0 || !strings.Contains(text, "added disk vm3") {
		t.Fatalf("disk add: exit %d: %s%s", code, stderr, text)
	}
	three := bytes.Repeat([]byte("disk three "), 4096/11+1)[:4096]
	d3 := connect(t, s3)
	write(t, d3, 8, three)

	list := disksOf(t, ctl)
	if len(list) != 3 || !list["vm3"].Attached || list["vm3"].NumQueues != 1 || list["vm3"].Image != img3 ||
		list["vm2"].Serial != "second-disk" || list["vm2"].Durability != "sync" || list["vm1"].Sectors == 0 {
		t.Fatalf("disk list after add: %+v", list)
	}

	code, _, stderr = nvblk(t, nil, "disk", "remove", "--control-socket", ctl, "vm3")
	if code != 1 || !strings.Contains(stderr, "front-end is attached") || !strings.Contains(stderr, "--force") {
		t.Fatalf("removing an attached disk: exit %d, %q; want it refused", code, stderr)
	}
	if code, text, stderr = nvblk(t, nil, "disk", "remove", "--control-socket", ctl, "vm3", "--force"); code != 0 {
		t.Fatalf("disk remove --force: exit %d: %s%s", code, stderr, text)
	}
	if err := d3.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: make([]byte, 4096)}, time.Second); err == nil {
		t.Error("the front-end of the removed disk is still served")
	}
	d3.Close()
	wantGone(t, s3, "the removed disk's socket")
	if list := disksOf(t, ctl); len(list) != 2 || list["vm3"].Name != "" {
		t.Errorf("disk list after remove: %+v", list)
	}
	if after := fdsOf(t, pid); after > before {
		t.Errorf("serve has %d descriptors after adding and removing vm3, %d before", after, before)
	}
	// The image is released: it opens again, here by nvblk read.
	if code, got, stderr := nvblk(t, nil, "read", img3, "--lba", "1"); code != 0 || got != string(three) {
		t.Fatalf("read the removed disk's image: exit %d (%s), equal %v", code, stderr, got == string(three))
	}

	d1.Close()
	d2.Close()
	terminate(t, cmd, exited, out)
	if n := strings.Count(out.String(), "image flushed and closed"); n != 3 {
		t.Errorf("%d disks flushed and closed, want 3:\n%s", n, out)
	}
	for _, p := range []string{s1, s2, ctl} {
		wantGone(t, p, "socket")
	}
	for _, c := range []struct {
		img  string
		lba  string
		data []byte
	}{{img1, "0", one}, {img2, "0", two}, {img3, "1", three}} {
		if code, out, stderr := nvblk(t, nil, "check", c.img); code != 0 {
			t.Errorf("check %s: exit %d: %s%s", c.img, code, out, stderr)
		}
		if code, got, _ := nvblk(t, nil, "read", c.img, "--lba", c.lba); code != 0 || got != string(c.data) {
			t.Errorf("%s holds another disk's data or none (exit %d)", c.img, code)
		}
	}
}

// serveDisksInProcess starts `serve --disk vm1...` in-process with a
// control socket and returns the control socket and vm1's socket.
func serveDisksInProcess(t *testing.T) (ctl, sock1, img1 string) {
	t.Helper()
	img1 = formatted(t)
	dir := t.TempDir()
	sock1, ctl = filepath.Join(dir, "vm1.sock"), filepath.Join(dir, "nvblk.ctl")
	stop, _, stderr := servingInProcess(t, "serve", "--control-socket", ctl, "--log-level", "warn",
		"--disk", "name=vm1,blk-file="+img1+",socket-path="+sock1)
	t.Cleanup(func() {
		if code := stop(); code != 0 {
			t.Errorf("serve: exit %d: %s", code, stderr)
		}
	})
	return ctl, sock1, img1
}

func TestDiskAddRefusesDuplicatesAndBadValuesLeavingNothingOpen(t *testing.T) {
	fdcheck.Check(t)
	ctl, sock1, img1 := serveDisksInProcess(t)
	dir := t.TempDir()
	free := formatted(t)
	link := filepath.Join(dir, "link.img")
	if err := os.Symlink(img1, link); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "fresh.sock")
	before := fdcheck.Open(t)
	for _, c := range []struct{ name, spec, want string }{
		{"a name already served", "name=vm1,blk-file=" + free + ",socket-path=" + fresh, "already served"},
		{"a socket already served", "name=b,blk-file=" + free + ",socket-path=" + sock1, "is disk vm1's"},
		{"an image already served", "name=b,blk-file=" + img1 + ",socket-path=" + fresh, "already served as disk vm1"},
		{"an image already served, by a symlink", "name=b,blk-file=" + link + ",socket-path=" + fresh, "already served as disk vm1"},
		{"a missing image", "name=b,blk-file=" + filepath.Join(dir, "none.img") + ",socket-path=" + fresh, "no such file"},
		{"a socket in a missing directory", "name=b,blk-file=" + free + ",socket-path=" + filepath.Join(dir, "no", "b.sock"), "no such file"},
		{"too many queues", "name=b,blk-file=" + free + ",socket-path=" + fresh + ",num-queues=300", "want 1..256"},
		{"an unknown key", "name=b,blk-file=" + free + ",socket-path=" + fresh + ",colour=red", `unknown key "colour"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := nvblk(t, nil, "disk", "add", "--control-socket", ctl, c.spec)
			if code == 0 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, %q; want a failure saying %q", code, stderr, c.want)
			}
		})
	}
	// The server sees the same bad values when a script skips the CLI.
	for _, req := range []control.Request{
		{Cmd: "disk-add", Spec: "name=b,blk-file=" + free + ",socket-path=" + fresh + ",num-queues=300"},
		{Cmd: "disk-add"},
		{Cmd: "disk-remove", Disk: "vm1", Mode: "gently"},
		{Cmd: "disk-remove", Disk: "vm1", Mode: control.RemoveDrain, Timeout: "1h"},
		{Cmd: "disk-remove", Disk: "nope"},
		{Cmd: "detach"},
	} {
		if r, err := control.Do(ctl, req, controlTimeout); err == nil {
			t.Errorf("%+v: answered %+v, want an error", req, r)
		}
	}
	wantGone(t, fresh, "a refused disk's socket")
	if list := disksOf(t, ctl); len(list) != 1 {
		t.Errorf("disks after the refusals: %+v", list)
	}
	// The image no disk took is free: serve did not keep it open.
	if code, _, stderr := nvblk(t, nil, "read", free, "--lba", "0"); code != 0 {
		t.Errorf("the refused disk's image is held: %s", stderr)
	}
	// The server closes each control connection on its own time.
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		after := fdcheck.Open(t)
		if after <= before {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d descriptors after the refused adds, %d before", after, before)
			break
		}
	}
}

func TestDiskRemoveDrainWaitsForTheGuestToLeave(t *testing.T) {
	fdcheck.Check(t)
	ctl, sock1, _ := serveDisksInProcess(t)
	d := connect(t, sock1)
	code, _, stderr := nvblk(t, nil, "disk", "remove", "--control-socket", ctl, "vm1", "--drain", "--timeout", "200ms")
	if code != 1 || !strings.Contains(stderr, "still after waiting") {
		t.Fatalf("drain with the guest staying: exit %d, %q; want a timeout", code, stderr)
	}
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}, ioTimeout); err != nil {
		t.Fatalf("a drain that timed out dropped the guest: %v", err)
	}
	done := make(chan string, 1)
	go func() {
		code, _, stderr := nvblk(t, nil, "disk", "remove", "--control-socket", ctl, "vm1", "--drain", "--timeout", "10s")
		done <- strconv.Itoa(code) + " " + stderr
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("drain returned while the guest is attached: %s", r)
	default:
	}
	d.Close()
	select {
	case r := <-done:
		if r != "0 " {
			t.Fatalf("drain after the guest left: %s", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not end when the guest left")
	}
	wantGone(t, sock1, "the drained disk's socket")
}

func TestDiskCommandsUsageErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no subcommand", []string{"disk"}, "missing add, remove or list"},
		{"unknown subcommand", []string{"disk", "grow"}, "unknown disk command"},
		{"no control socket", []string{"disk", "list"}, "missing --control-socket"},
		{"add without spec", []string{"disk", "add", "--control-socket", "c"}, "want one spec"},
		{"add a bad spec", []string{"disk", "add", "--control-socket", "c", "name=a"}, "missing blk-file="},
		{"remove without name", []string{"disk", "remove", "--control-socket", "c"}, "want one disk NAME"},
		{"force and drain", []string{"disk", "remove", "--control-socket", "c", "a", "--force", "--drain"}, "mutually exclusive"},
		{"timeout without drain", []string{"disk", "remove", "--control-socket", "c", "a", "--timeout", "1s"}, "--timeout is for --drain"},
		{"drain too long", []string{"disk", "remove", "--control-socket", "c", "a", "--drain", "--timeout", "11m"}, "at most"},
		{"json on remove", []string{"disk", "remove", "--control-socket", "c", "a", "--json"}, "not defined"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := nvblk(t, nil, c.args...)
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 saying %q", code, stderr, c.want)
			}
		})
	}
}

// A one-disk serve (--blk-file) answers the disk commands with how to get
// a serve that takes them, not with a crash or a silent no.
func TestDiskCommandsOnAOneDiskServeSayToStartWithDisk(t *testing.T) {
	img := formatted(t)
	sock := filepath.Join(t.TempDir(), "nvblk.sock")
	stop, _, _ := servingInProcess(t, "serve", "--socket-path", sock, "--blk-file", img, "--log-level", "warn")
	defer stop()
	code, _, stderr := nvblk(t, nil, "disk", "list", "--control-socket", sock+".ctl")
	if code != 1 || !strings.Contains(stderr, "start nvblk serve with --disk") {
		t.Fatalf("disk list on a one-disk serve: exit %d, %q", code, stderr)
	}
}

// A disk removed with --force while its guest writes: the writer's next
// request fails (its front-end is dropped), every write acknowledged before
// is in the image, which checks consistent; the other disk is served on.
func TestDiskRemoveForceWhileItsGuestWritesKeepsEveryAcknowledgedWrite(t *testing.T) {
	img1, img2 := formatted(t), formatted(t)
	dir := t.TempDir()
	s1, s2, ctl := filepath.Join(dir, "vm1.sock"), filepath.Join(dir, "vm2.sock"), filepath.Join(dir, "nvblk.ctl")
	stop, _, stderr := servingInProcess(t, "serve", "--control-socket", ctl, "--log-level", "error",
		"--disk", "name=vm1,blk-file="+img1+",socket-path="+s1,
		"--disk", "name=vm2,blk-file="+img2+",socket-path="+s2)
	d1, d2 := connect(t, s1), connect(t, s2)
	sector := func(i int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("write %06d ", i)), 4096/13+1)[:4096]
	}
	acked := make(chan int, 1)
	go func() {
		n := 0
		for ; n < 100000; n++ {
			lba := uint64(n % 4000)
			if err := d2.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: lba * 8, Data: sector(n)}, ioTimeout); err != nil {
				break
			}
		}
		acked <- n
	}()
	time.Sleep(300 * time.Millisecond)
	if code, text, errOut := nvblk(t, nil, "disk", "remove", "--control-socket", ctl, "vm2", "--force"); code != 0 {
		t.Fatalf("disk remove --force under writes: exit %d: %s%s", code, errOut, text)
	}
	var n int
	select {
	case n = <-acked:
	case <-time.After(30 * time.Second):
		t.Fatal("the removed disk's writer is still being served")
	}
	if n == 0 || n == 100000 {
		t.Fatalf("%d writes acknowledged: the removal did not land among them", n)
	}
	t.Logf("%d writes acknowledged before the forced removal", n)
	write(t, d1, 0, sector(-1)) // the other disk goes on
	if code, out, errOut := nvblk(t, nil, "check", img2); code != 0 {
		t.Fatalf("check of the removed disk's image: exit %d: %s%s", code, out, errOut)
	}
	// Each LBA holds its last acknowledged write, or the write after it,
	// which may have landed before the front-end went.
	written := min(n, 4000)
	code, all, _ := nvblk(t, nil, "read", img2, "--lba", "0", "--count", strconv.Itoa(written))
	if code != 0 || len(all) != written*4096 {
		t.Fatalf("read of the removed disk's image: exit %d, %d bytes", code, len(all))
	}
	for lba := range written {
		last := n - 1 - (n-1-lba)%4000
		got := all[lba*4096 : (lba+1)*4096]
		if got != string(sector(last)) && got != string(sector(last+4000)) {
			t.Fatalf("LBA %d after the removal holds %q, want write %d", lba, got[:12], last)
		}
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve exit %d: %s", code, stderr)
	}
}
