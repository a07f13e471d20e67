package libvirt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// shipped is the example domain, relative to this package's directory.
const shipped = "../../contrib/libvirt/nvblk-guest.xml"

// domainName is the shipped domain's <name>, kept by the test.
const domainName = "nvblk-guest"

// qemuUser is the user and group libvirt runs QEMU as on Debian, and the
// group README.md gives serve's socket.
const qemuUser = "libvirt-qemu"

const dev = "/dev/vda"

// testDomain is the shipped domain as the test boots it: each replacement
// is of a whole element or attribute that must be there exactly once, so
// that the test fails, rather than boots something else, when the example
// changes. vm is the directory of the kernel, the initramfs and the serial
// files; sock is serve's socket.
func testDomain(t *testing.T, xml, vm, sock string) string {
	t.Helper()
	for _, r := range []struct{ old, new string }{
		// The values the example's comment gives the operator.
		{"<kernel>/vmlinuz</kernel>", "<kernel>" + filepath.Join(vm, "vmlinuz") + "</kernel>"},
		{"<initrd>/initrd.img</initrd>", "<initrd>" + filepath.Join(vm, "initramfs.cpio") + "</initrd>"},
		{"path='/run/nvblk/nvblk.sock'", "path='" + sock + "'"},
		// The harness's kernel command line: a kernel panic reboots
		// at once, and on_reboot destroy makes that the end.
		{"<cmdline>console=ttyS0</cmdline>", "<cmdline>console=ttyS0 panic=-1 loglevel=7</cmdline>"},
		{"<on_reboot>restart</on_reboot>", "<on_reboot>destroy</on_reboot>"},
	} {
		if n := strings.Count(xml, r.old); n != 1 {
			t.Fatalf("%s has %q %d times, want once: the example changed without its test", shipped, r.old, n)
		}
		xml = strings.Replace(xml, r.old, r.new, 1)
	}
	// The console and the agent's report port are files the test reads.
	console := regexp.MustCompile(`(?s)<serial type='pty'>.*?</console>`)
	if n := len(console.FindAllString(xml, -1)); n != 1 {
		t.Fatalf("%s has %d pty serial consoles, want one: the example changed without its test", shipped, n)
	}
	return console.ReplaceAllLiteralString(xml, fmt.Sprintf(`<serial type='file'>
      <source path='%s'/>
      <target port='0'/>
    </serial>
    <serial type='file'>
      <source path='%s'/>
      <target port='1'/>
    </serial>`, filepath.Join(vm, "console.log"), filepath.Join(vm, "agent.log")))
}

// The guests' data: a head written and read back before anything else, a
// stream written while nvblk is killed, and what the second boot writes
// over part of the stream.
const (
	sectorSize  = 4096
	headLBA     = 0
	headCount   = 64
	headSeed    = "libvirt-head"
	streamLBA   = headLBA + headCount
	streamCount = 4096 // 16 MiB: a few seconds of writes under TCG, past two restarts
	streamSeed  = "libvirt-stream"
	workers     = 4
	perFsync    = 16
	overLBA     = streamLBA + 1000
	overCount   = 256
	overSeed    = "libvirt-second-boot"
	kills       = 2 // SIGKILLs of serve under the stream
)

// The first boot's script. Its last step holds the guest until the test
// destroys it: a wait for a path nothing creates (it would fail after two
// minutes, and the guest power off).
func firstBoot() []agentproto.Step {
	return []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpRead, Path: "/sys/block/vda/size"},
		{Op: agentproto.OpList, Path: "/sys/block/vda/mq"},
		{Op: agentproto.OpWriteSectors, Device: dev, SectorSize: sectorSize, LBA: headLBA, Count: headCount, Seed: headSeed},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: sectorSize, LBA: headLBA, Count: headCount, Seed: headSeed},
		{Op: agentproto.OpSeqWrite, Device: dev, SectorSize: sectorSize, LBA: streamLBA, Count: streamCount,
			Workers: workers, Chunk: perFsync, Seed: streamSeed, Pin: true},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: sectorSize, LBA: streamLBA, Count: streamCount, Seed: streamSeed},
		{Op: agentproto.OpWait, Path: "/virsh-destroy-ends-this-guest", TimeoutMS: 120000},
	}
}

const (
	stepSize, stepQueues, stepHeadChecked, stepStream, stepStreamChecked = 1, 2, 4, 5, 6
)

// The second boot's script, in the same initramfs file: everything the
// first wrote reads back, and a write over part of the stream. The agent
// then powers off.
func secondBoot() []agentproto.Step {
	return []agentproto.Step{
		{Op: agentproto.OpWait, Path: dev, TimeoutMS: 30000},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: sectorSize, LBA: headLBA, Count: headCount, Seed: headSeed},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: sectorSize, LBA: streamLBA, Count: streamCount, Seed: streamSeed},
		{Op: agentproto.OpWriteSectors, Device: dev, SectorSize: sectorSize, LBA: overLBA, Count: overCount, Seed: overSeed},
		{Op: agentproto.OpCheckSectors, Device: dev, SectorSize: sectorSize, LBA: overLBA, Count: overCount, Seed: overSeed},
	}
}

func TestShippedDomainRunsOnNvblkThroughKillsDestroyAndStart(t *testing.T) {
	start := time.Now()
	xml, err := os.ReadFile(shipped)
	if err != nil {
		t.Fatal(err)
	}
	qemuUID, qemuGID := lookupQEMUUser(t)
	img := suite.FormatImage(t, "64M", sectorSize)
	lv := startDaemons(t)
	t.Logf("libvirtd and virtlogd up in %v", time.Since(start).Round(10*time.Millisecond))

	// The guest's files, where QEMU (libvirt-qemu) reaches them.
	vm := filepath.Join(lv.root, "vm")
	if err := os.Mkdir(vm, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, suite.Kit.Kernel, filepath.Join(vm, "vmlinuz"))
	initramfs := filepath.Join(vm, "initramfs.cpio")
	if err := suite.Kit.WriteInitramfs(initramfs, firstBoot()); err != nil {
		t.Fatal(err)
	}
	consoleLog, agentLog := filepath.Join(vm, "console.log"), filepath.Join(vm, "agent.log")

	// nvblk serve as README.md's libvirt section starts it.
	sock := filepath.Join(vm, "nvblk.sock")
	gen := 0
	serve := func() *guest.Backend {
		return suite.Serve(t, fmt.Sprintf("nvblk serve #%d", gen), sock, img.Path,
			"--socket-mode", "0660", "--socket-group", qemuUser)
	}
	srv := serve()
	if st, err := os.Stat(sock); err != nil {
		t.Fatal(err)
	} else if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o660 || int(sys.Gid) != qemuGID {
		t.Fatalf("serve's socket is %v, group %d; want 0660, group %s (%d)", st.Mode().Perm(), sys.Gid, qemuUser, qemuGID)
	}

	domXML := testDomain(t, string(xml), vm, sock)
	domFile := filepath.Join(vm, domainName+".xml")
	if err := os.WriteFile(domFile, []byte(domXML), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("the domain the test defines (%s with the test's paths and consoles):\n%s", shipped, domXML)
	lv.mustVirsh(t, "define", domFile)
	t.Logf("virsh dumpxml after define:\n%s", lv.mustVirsh(t, "dumpxml", domainName))
	t.Cleanup(func() {
		t.Logf("libvirt's QEMU log (%s):\n%s", filepath.Join(lv.root, "log", "qemu", domainName+".log"), lv.qemuLog(domainName))
	})

	// First boot.
	lv.mustVirsh(t, "start", domainName)
	t.Logf("virsh start returned %v after the test began", time.Since(start).Round(10*time.Millisecond))
	qemu, err := lv.qemuPid(domainName)
	if err != nil {
		t.Fatal(err)
	}
	checkCredentials(t, qemu, qemuUID, qemuGID)
	first := newBootLog(t, "first", agentLog, consoleLog)
	reps := first.waitStep(stepHeadChecked, 90*time.Second)
	checkDisk(t, reps, img)

	// The kills, while the guest's writers are writing: at a third and
	// at two thirds of the stream. QEMU keeps the guest running and
	// reconnects to the new serve.
	for k := 1; k <= kills; k++ {
		before := first.waitAcked(k*streamCount/(kills+1), 60*time.Second)
		srv.Kill(t)
		down := time.Now()
		gen++
		srv = serve()
		got := first.waitAcked(len(before)+workers*perFsync, 30*time.Second)
		t.Logf("SIGKILL #%d with %d sectors acknowledged; writes flowed again %v later (%d acknowledged)",
			k, len(before), time.Since(down).Round(10*time.Millisecond), len(got))
		if state := lv.state(t, domainName); state != "running" {
			t.Fatalf("domain %s after nvblk's restart: %s, want running", domainName, state)
		}
		if pid, err := lv.qemuPid(domainName); err != nil || pid != qemu {
			t.Fatalf("QEMU after nvblk's restart: pid %d (%v), want the same QEMU, %d", pid, err, qemu)
		}
	}
	reps = first.waitStep(stepStreamChecked, 60*time.Second)
	var seq agentproto.SeqWriteData
	if err := (&guest.Result{Reports: reps}).Decode(stepStream, &seq); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %d sectors written by %d writers, %d fsyncs, slowest write %d ms (a restart)",
		seq.Sectors, len(seq.Writers), seq.Fsyncs, seq.SlowestMS)
	if ack := first.acked(); seq.Sectors != streamCount || len(ack) != streamCount {
		t.Fatalf("guest wrote %d sectors and reported %d acknowledged, want %d", seq.Sectors, len(ack), streamCount)
	}
	first.checkConsole()

	// virsh destroy: QEMU is killed. The same serve, which StopClean
	// finds still serving at the end, is the next QEMU's back-end.
	lv.mustVirsh(t, "destroy", domainName)
	lv.waitState(t, domainName, "shut off", 30*time.Second)
	first.moveAside()

	// Second boot: the same definition, a new script in its initramfs.
	if err := suite.Kit.WriteInitramfs(initramfs, secondBoot()); err != nil {
		t.Fatal(err)
	}
	lv.mustVirsh(t, "start", domainName)
	second := newBootLog(t, "second", agentLog, consoleLog)
	reps = second.waitDone(120 * time.Second)
	if err := (&guest.Result{Reports: reps}).Finished(); err != nil {
		t.Fatal(err)
	}
	lv.waitState(t, domainName, "shut off", 30*time.Second)
	second.checkConsole()
	second.moveAside()
	checkQEMUCommandLines(t, lv.qemuLog(domainName), sock, 2)

	srv.StopClean(t)
	suite.CheckImage(t, img.Path)
	got := suite.ReadImage(t, img, headLBA, headCount+streamCount)
	bad := 0
	for i := range headCount + streamCount {
		lba := uint64(headLBA + i)
		want := agentproto.Pattern(headSeed, lba, sectorSize)
		switch {
		case lba >= overLBA && lba < overLBA+overCount:
			want = agentproto.Pattern(overSeed, lba, sectorSize)
		case lba >= streamLBA:
			want = agentproto.Pattern(streamSeed, lba, sectorSize)
		}
		if s := got[i*sectorSize : (i+1)*sectorSize]; !bytes.Equal(s, want) {
			if bad++; bad <= 10 {
				t.Errorf("LBA %d starts %x on the image, want %x", lba, s[:16], want[:16])
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d sectors the guests wrote are not on the image", bad, headCount+streamCount)
	}
	t.Logf("two boots, %d SIGKILLs of nvblk, a virsh destroy: %d sectors verified on the image; %v in all",
		kills, headCount+streamCount, time.Since(start).Round(time.Second))
}

// lookupQEMUUser is libvirt-qemu's uid and gid, which the Debian package
// creates.
func lookupQEMUUser(t *testing.T) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(qemuUser)
	if err != nil {
		t.Fatalf("user %s: %v; %s", qemuUser, err, installHint)
	}
	g, err := user.LookupGroup(qemuUser)
	if err != nil {
		t.Fatalf("group %s: %v; %s", qemuUser, err, installHint)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(g.Gid)
	return uid, gid
}

// checkCredentials checks that QEMU runs as libvirt-qemu, not root: its
// connect to serve's socket is what --socket-group is for.
func checkCredentials(t *testing.T, pid, uid, gid int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var uids, gids, groups []string
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "Uid":
			uids = strings.Fields(v)
		case "Gid":
			gids = strings.Fields(v)
		case "Groups":
			groups = strings.Fields(v)
		}
	}
	t.Logf("QEMU (pid %d) runs as uid %v, gid %v, groups %v", pid, uids, gids, groups)
	if len(uids) == 0 || len(gids) == 0 || uids[0] != strconv.Itoa(uid) || gids[0] != strconv.Itoa(gid) {
		t.Fatalf("QEMU runs as uid %v gid %v, want %s (%d:%d)", uids, gids, qemuUser, uid, gid)
	}
}

// checkDisk checks that the guest's vda is the image: its capacity, and
// the two request queues of <driver queues='2'/>.
func checkDisk(t *testing.T, reps []agentproto.Report, img guest.Image) {
	t.Helper()
	res := &guest.Result{Reports: reps}
	var size agentproto.ReadData
	if err := res.Decode(stepSize, &size); err != nil {
		t.Fatal(err)
	}
	if want := img.NumSectors * uint64(img.SectorSize) / 512; strings.TrimSpace(size.Text) != strconv.FormatUint(want, 10) {
		t.Errorf("guest /sys/block/vda/size = %q, want %d (the image's %d sectors)", size.Text, want, img.NumSectors)
	}
	var mq []string
	if err := res.Decode(stepQueues, &mq); err != nil {
		t.Fatal(err)
	}
	if len(mq) != 2 {
		t.Errorf("guest /sys/block/vda/mq = %v, want the 2 queues of <driver queues='2'/>", mq)
	}
}

// checkQEMUCommandLines checks what libvirt made of the domain, in each of
// the boots libvirt's log records: RAM in a shared memfd, a vhost-user-blk
// device of two queues on serve's socket with a reconnecting chardev, TCG.
func checkQEMUCommandLines(t *testing.T, log, sock string, boots int) {
	t.Helper()
	starts := strings.Split(log, "starting up libvirt")[1:]
	if len(starts) != boots {
		t.Fatalf("libvirt's QEMU log records %d starts, want %d", len(starts), boots)
	}
	for i, s := range starts {
		for _, want := range []string{
			`"qom-type":"memory-backend-memfd"`,
			`"share":true`,
			"-accel tcg",
			"-chardev socket,id=chr-vu-virtio-disk0,path=" + sock + ",reconnect=1",
			`"driver":"vhost-user-blk-pci","num-queues":2`,
		} {
			if !strings.Contains(s, want) {
				t.Errorf("QEMU command line of start %d lacks %s", i+1, want)
			}
		}
	}
}

// bootLog reads one boot's serial files.
type bootLog struct {
	t              *testing.T
	name           string
	agent, console string
}

// newBootLog reads the boot's files; its console is logged at the end if
// the test fails.
func newBootLog(t *testing.T, name, agent, console string) *bootLog {
	b := &bootLog{t: t, name: name, agent: agent, console: console}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("NVBLK_GUEST_CONSOLE") != "" {
			console, _ := os.ReadFile(b.console)
			t.Logf("%s boot's guest console:\n%s", name, console)
		}
	})
	return b
}

// reports is what the agent reported so far, failing the test on a
// failed step or a garbled line.
func (b *bootLog) reports() []agentproto.Report {
	b.t.Helper()
	reps, err := guest.ReadReports(b.agent)
	if err != nil && !os.IsNotExist(err) {
		b.t.Fatal(err)
	}
	for _, r := range reps {
		if !r.OK && r.Op != agentproto.OpProgress {
			b.t.Fatalf("guest step %d (%s) failed: %s %s\nconsole tail:\n%s", r.Step, r.Op, r.Error, r.Data, b.tail())
		}
	}
	return reps
}

// waitStep waits for the report of script step i.
func (b *bootLog) waitStep(i int, timeout time.Duration) []agentproto.Report {
	b.t.Helper()
	return b.wait(fmt.Sprintf("step %d", i), timeout, func(r agentproto.Report) bool { return r.Step == i })
}

// waitDone waits for the agent's end of script.
func (b *bootLog) waitDone(timeout time.Duration) []agentproto.Report {
	b.t.Helper()
	return b.wait("the end of the script", timeout, func(r agentproto.Report) bool { return r.Op == agentproto.OpDone })
}

func (b *bootLog) wait(what string, timeout time.Duration, match func(agentproto.Report) bool) []agentproto.Report {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		reps := b.reports()
		for _, r := range reps {
			if match(r) {
				return reps
			}
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("no report of %s within %v (%d reports)\nconsole tail:\n%s", what, timeout, len(reps), b.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// acked is every sector the guest's writers reported acknowledged.
func (b *bootLog) acked() map[uint64]bool {
	b.t.Helper()
	out := map[uint64]bool{}
	for _, r := range b.reports() {
		if r.Op != agentproto.OpProgress {
			continue
		}
		var p agentproto.ProgressData
		if err := json.Unmarshal(r.Data, &p); err != nil {
			b.t.Fatalf("progress report %s: %v", r.Data, err)
		}
		for _, lba := range p.LBAs {
			if out[lba] {
				b.t.Fatalf("LBA %d acknowledged twice", lba)
			}
			out[lba] = true
		}
	}
	return out
}

// waitAcked waits until the guest reported at least n sectors
// acknowledged; the stream ending first is a failure (a kill must land
// under writes).
func (b *bootLog) waitAcked(n int, timeout time.Duration) map[uint64]bool {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := b.acked()
		if len(got) >= n {
			if len(got) == streamCount {
				b.t.Fatalf("the guest's stream ended (%d sectors) before a kill: it is too short for the restarts", len(got))
			}
			return got
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%d sectors acknowledged after %v, waiting for %d: a write never completed\nconsole tail:\n%s",
				len(got), timeout, n, b.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkConsole fails the test on kernel trouble on the guest console:
// an I/O error, a broken virtqueue, a hung task, an oops.
func (b *bootLog) checkConsole() {
	b.t.Helper()
	console, _ := os.ReadFile(b.console)
	for _, bad := range guest.KernelTrouble(string(console)) {
		b.t.Errorf("guest kernel: %s", bad)
	}
}

func (b *bootLog) tail() string {
	console, _ := os.ReadFile(b.console)
	lines := strings.Split(strings.TrimRight(string(console), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// moveAside moves the boot's serial files aside once its QEMU is gone:
// libvirt appends to them, and the next boot's reports must be its own.
func (b *bootLog) moveAside() {
	b.t.Helper()
	for _, p := range []*string{&b.agent, &b.console} {
		moved := strings.TrimSuffix(*p, ".log") + "-" + b.name + ".log"
		if err := os.Rename(*p, moved); err != nil {
			b.t.Fatal(err)
		}
		*p = moved
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
