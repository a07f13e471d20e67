package pmem

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

const (
	nvdimmSize = 128 << 20 // the emulated NVDIMM, all of namespace0.0
	sectorSize = 4096
	nvblkBin   = "/bin/nvblk"
	socket     = "/tmp/nvblk.sock"
	// verifyCount sectors from LBA 0 (8 MiB) are written and verified
	// through serve's socket, then overwritten by writes that a SIGKILL
	// of serve cuts short.
	verifyCount = 2048
)

// The base archive plus ndctl, the dax modules and a static nvblk, built
// once for the package's guests.
var (
	initramfsOnce sync.Once
	initramfsPath string
	initramfsErr  error
)

func pmemInitramfs(t *testing.T) string {
	t.Helper()
	cli := suite.GuestCLI(t)
	initramfsOnce.Do(func() {
		initramfsPath = filepath.Join(suite.Dir(), "pmem.cpio")
		initramfsErr = suite.Kit.InitramfsWith(initramfsPath, guest.Extras{
			// dax_pmem turns a devdax-mode namespace into a dax device on
			// the dax bus, device_dax gives it its /dev/daxN.M; fsdax
			// needs only nd_pmem (the pfn driver is part of libnvdimm).
			Modules:  []string{"dax_pmem", "device_dax"},
			Programs: map[string]string{"/usr/bin/ndctl": "ndctl"},
			Files:    map[string]string{nvblkBin: cli},
		})
	})
	if initramfsErr != nil {
		t.Fatalf("pmem initramfs: %v", initramfsErr)
	}
	return initramfsPath
}

// script numbers the steps as they are added, so that the checks below
// name steps rather than count them.
type script struct{ steps []agentproto.Step }

func (s *script) add(st agentproto.Step) int {
	s.steps = append(s.steps, st)
	return len(s.steps) - 1
}

func (s *script) nvblk(args ...string) int {
	return s.add(agentproto.Step{Op: agentproto.OpExec, Argv: append([]string{nvblkBin}, args...)})
}

// serve starts nvblk serve on the medium with durability auto, as the
// spawned program name (stop's handle), and waits until it listens.
func (s *script) serve(medium, name string) {
	log := "/tmp/" + name + ".log"
	s.add(agentproto.Step{Op: agentproto.OpSpawn, Name: name, Path: log,
		// Two queues, not serve's default of four: conformance's
		// ring/multiqueue writes min(queues, 4) x 32 x 4 KiB into its
		// 256 KiB scratch range, so with four queues two of them share
		// every sector and a read-back races the other queue's write
		// (it fails the same way against serve on a host file).
		Argv: []string{nvblkBin, "serve", "--socket-path", socket, "--blk-file", medium, "--durability", "auto", "--num-queues", "2"}})
	// serve prints the "# attach" block last, once every socket listens.
	s.add(agentproto.Step{Op: agentproto.OpWait, Path: log, Value: "# attach", TimeoutMS: 60000})
}

// stop ends a serve with SIGTERM, which must drain and exit 0.
func (s *script) stop(name string) int {
	return s.add(agentproto.Step{Op: agentproto.OpStop, Name: name, Value: "TERM"})
}

// pmemMode is one way of putting nvblk on the NVDIMM.
type pmemMode struct {
	name   string
	setup  func(s *script) int // namespace0.0 to what nvblk opens; returns the ndctl step
	medium string              // what nvblk formats and serves
	format []string            // format's arguments after the medium
	// kind and mapSync are what serve must log: devdax has no MAP_SYNC
	// (no page cache to bypass), an fsdax file has it.
	kind    string
	mapSync string
}

var devdax = pmemMode{
	name: "devdax",
	setup: func(s *script) int {
		ndctl := s.add(agentproto.Step{Op: agentproto.OpExec, Argv: []string{"/usr/bin/ndctl", "create-namespace", "-f", "-e", "namespace0.0", "-m", "devdax"}})
		s.add(agentproto.Step{Op: agentproto.OpWait, Path: "/dev/dax0.0", TimeoutMS: 20000})
		return ndctl
	},
	medium:  "/dev/dax0.0",
	format:  []string{"--sector-size", strconv.Itoa(sectorSize)},
	kind:    "devdax",
	mapSync: "false",
}

var fsdax = pmemMode{
	name: "fsdax",
	setup: func(s *script) int {
		ndctl := s.add(agentproto.Step{Op: agentproto.OpExec, Argv: []string{"/usr/bin/ndctl", "create-namespace", "-f", "-e", "namespace0.0", "-m", "fsdax"}})
		s.add(agentproto.Step{Op: agentproto.OpWait, Path: "/dev/pmem0", TimeoutMS: 20000})
		// DAX needs the block size to be the page size; mke2fs would pick
		// 1 KiB blocks for a file system this small.
		s.add(agentproto.Step{Op: agentproto.OpExec, Argv: []string{"/sbin/mkfs.ext4", "-F", "-q", "-b", "4096", "/dev/pmem0"}})
		s.add(agentproto.Step{Op: agentproto.OpMount, Source: "/dev/pmem0", Target: "/mnt", FSType: "ext4", Options: "dax"})
		return ndctl
	},
	medium:  "/mnt/nvblk.img",
	format:  []string{"--size", "64M", "--sector-size", strconv.Itoa(sectorSize)},
	kind:    "file",
	mapSync: "true",
}

func TestNvblkOnDevDAXInsideTheGuest(t *testing.T) { runMode(t, devdax) }

func TestNvblkOnFsDAXInsideTheGuest(t *testing.T) { runMode(t, fsdax) }

// runMode boots a guest on an emulated NVDIMM and, inside it, makes the
// namespace a pmem medium, formats it with nvblk and serves it with
// durability auto: nvblk bench drives it, a vhost-user front-end in the
// guest writes pattern V and reads it back through serve's socket, nvblk
// conformance --destructive runs, and after a restart V is read back
// through the socket again. Then the front-end overwrites V with pattern
// N and SIGKILLs serve once a random share of the writes is acknowledged:
// read back with a read-only open, and again after a writable open has
// recovered the BTT, every sector is wholly V or wholly N, every
// acknowledged one N and every one never sent V, and nvblk check passes.
// Every serve's start-up line must name the medium: its kind, MAP_SYNC,
// durability dax and the cache-line write-back the guest CPU offers.
func runMode(t *testing.T, mode pmemMode) {
	initrd := pmemInitramfs(t)
	img := filepath.Join(t.TempDir(), "nvdimm.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, nvdimmSize); err != nil {
		t.Fatal(err)
	}
	seed := killSeed(t)
	// Kill when 10% to 90% of the overwrite is acknowledged.
	killAt := 0.1 + 0.8*rand.New(rand.NewPCG(seed, 0)).Float64()
	seedV, seedN := "verify-"+mode.name, "new-"+mode.name

	var s script
	cpuinfo := s.add(agentproto.Step{Op: agentproto.OpRead, Path: "/proc/cpuinfo", Size: 1 << 16})
	ndctl := mode.setup(&s)
	formatted := s.nvblk(append([]string{"format", mode.medium}, mode.format...)...)

	s.serve(mode.medium, "serve-1")
	// bench writes what it likes; the verified range is written after it.
	bench := s.nvblk("bench", "--socket-path", socket, "--rw", "randrw", "--bs", "4k", "--iodepth", "8", "--time", "2s", "--json")
	verify := s.add(agentproto.Step{Op: agentproto.OpVhostVerify, Path: socket, SectorSize: sectorSize,
		Count: verifyCount, Chunk: 8, Workers: 8, Seed: seedV})
	// Only the last 256 KiB, saved and written back.
	conformance := s.nvblk("conformance", "--socket-path", socket, "--destructive", "--timeout", "30s")
	logs := []int{s.stop("serve-1")}
	s.serve(mode.medium, "serve-2")
	reverify := s.add(agentproto.Step{Op: agentproto.OpVhostVerify, Path: socket, SectorSize: sectorSize,
		Count: verifyCount, Chunk: 8, Workers: 8, Seed: seedV, ReadOnly: true})
	killed := s.add(agentproto.Step{Op: agentproto.OpVhostVerify, Path: socket, SectorSize: sectorSize,
		Count: verifyCount, Chunk: 8, Workers: 8, Seed: seedN, Name: "serve-2", KillAt: killAt})
	logs = append(logs, killed)
	readBack := func(file string) int {
		s.add(agentproto.Step{Op: agentproto.OpExec, Stdout: file,
			Argv: []string{nvblkBin, "read", mode.medium, "--lba", "0", "--count", strconv.Itoa(verifyCount)}})
		return s.add(agentproto.Step{Op: agentproto.OpCheckSectors, Device: file, SectorSize: sectorSize,
			Count: verifyCount, Seed: seedN, OldSeed: seedV})
	}
	// nvblk read opens the BTT read-only, which leaves a write the flog
	// holds but the map misses as it is; the next writable open (serve,
	// restarted after the crash, on the socket the dead one left) completes
	// it.
	afterKill := readBack("/tmp/after-kill.bin")
	s.serve(mode.medium, "serve-3")
	logs = append(logs, s.stop("serve-3"))
	checks := []int{s.nvblk("check", mode.medium)}
	afterRecovery := readBack("/tmp/after-recovery.bin")
	if mode.name == "fsdax" {
		s.add(agentproto.Step{Op: agentproto.OpUmount, Target: "/mnt"})
		checks = append(checks, s.add(agentproto.Step{Op: agentproto.OpExec, Argv: []string{"/sbin/e2fsck", "-f", "-n", "/dev/pmem0"}}))
	}

	// 512 MiB: the guest's tmpfs holds the initramfs (a static nvblk among
	// it) and two 8 MiB read-backs, beside three Go programs at a time.
	m := guest.Start(t, suite.Kit, guest.Config{
		NVDIMMs: []string{img}, MemoryMiB: 512, CPUs: 2, Initramfs: initrd, Steps: s.steps,
	})
	res, err := m.Wait()
	if err == nil {
		err = res.Finished()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: guest ran %v (agent up after %v)", mode.name, res.Wall, res.BootToAgent)
	if bad := guest.KernelTrouble(m.Console()); len(bad) > 0 {
		t.Errorf("guest kernel reported trouble:\n%s", strings.Join(bad, "\n"))
	}

	var cpu agentproto.ReadData
	decode(t, res, cpuinfo, &cpu)
	wantWriteBack := writeBackFor(t, cpu.Text)
	var ns, f agentproto.ExecData
	decode(t, res, ndctl, &ns)
	decode(t, res, formatted, &f)
	t.Logf("ndctl create-namespace -m %s:\n%s", mode.name, strings.TrimSpace(ns.Output))
	t.Logf("%s", strings.TrimSpace(f.Output))

	// Every serve, on the fresh BTT, the one killed and the one after
	// the kill, names the medium.
	want := map[string]string{"image": mode.medium, "kind": mode.kind, "map_sync": mode.mapSync,
		"durability": "dax", "write_back": wantWriteBack}
	for i, st := range logs {
		var log string
		if st == killed {
			var d agentproto.VerifyData
			decode(t, res, st, &d)
			log = d.Log
		} else {
			var d agentproto.ExecData
			decode(t, res, st, &d)
			log = d.Output
		}
		line := startupLine(log)
		if line == "" {
			t.Fatalf("serve %d logged no start-up line:\n%s", i+1, log)
		}
		if i == 0 {
			t.Logf("%s: serve's start-up line: %s", mode.name, line)
		}
		fields := logFields(line)
		for k, v := range want {
			if fields[k] != v {
				t.Errorf("serve %d start-up line: %s=%q, want %q\n%s", i+1, k, fields[k], v, line)
			}
		}
	}

	var b struct {
		Requests uint64  `json:"requests"`
		Failed   uint64  `json:"failed"`
		IOPS     float64 `json:"iops"`
	}
	var bd agentproto.ExecData
	decode(t, res, bench, &bd)
	if err := json.Unmarshal([]byte(jsonPart(bd.Output)), &b); err != nil {
		t.Fatalf("nvblk bench --json: %v\n%s", err, bd.Output)
	}
	if b.Requests == 0 || b.Failed != 0 {
		t.Errorf("nvblk bench: %d requests, %d failed\n%s", b.Requests, b.Failed, bd.Output)
	}
	t.Logf("%s: nvblk bench randrw 4k in the guest: %d requests, %.0f IOPS", mode.name, b.Requests, b.IOPS)

	var v, rv agentproto.VerifyData
	decode(t, res, verify, &v)
	decode(t, res, reverify, &rv)
	if v.Written != verifyCount || v.Verified != verifyCount || rv.Verified != verifyCount {
		t.Errorf("vhost-verify: wrote %d, verified %d, after restart %d; want %d each", v.Written, v.Verified, rv.Verified, verifyCount)
	}
	if v.Flushed {
		t.Errorf("serve on DAX offered FLUSH: a write-through device has no cache to flush")
	}
	t.Logf("%s: %d blocks written and verified through vhost-user (%d ms write, %d ms read), %d verified again after serve restarted",
		mode.name, v.Verified, v.WriteMS, v.ReadMS, rv.Verified)

	var c agentproto.ExecData
	decode(t, res, conformance, &c)
	t.Logf("%s: conformance: %s", mode.name, lastLine(c.Output))
	for _, i := range checks {
		var d agentproto.ExecData
		decode(t, res, i, &d)
		t.Logf("%s: %s", mode.name, lastLine(d.Output))
	}

	var k agentproto.VerifyData
	decode(t, res, killed, &k)
	if !k.Killed {
		t.Fatalf("serve was not killed among the writes: %+v", k)
	}
	t.Logf("%s: serve SIGKILLed with %d of %d sectors acknowledged (all of the first %d), %d requests in flight, %d sectors sent (kill_at %.2f, NVBLK_PMEM_SEED=%d)",
		mode.name, k.Written, verifyCount, k.AckedPrefix, k.InFlight, k.Submitted, killAt, seed)
	for _, r := range []struct {
		when string
		step int
	}{{"after the kill (read-only open)", afterKill}, {"after recovery", afterRecovery}} {
		var d agentproto.CheckData
		decode(t, res, r.step, &d)
		t.Logf("%s: %s: %d sectors new, %d old, none torn (first old %s, last new %s)",
			mode.name, r.when, d.Checked-d.Old, d.Old, lbaString(d.FirstOld), lbaString(d.LastNew))
		if d.Checked != verifyCount {
			t.Errorf("%s: checked %d sectors, want %d", r.when, d.Checked, verifyCount)
		}
		// An acknowledged write is durable: DAX completes a write only
		// once it is on the medium, and a killed process loses nothing
		// the medium holds.
		if d.FirstOld != nil && *d.FirstOld < uint64(k.AckedPrefix) {
			t.Errorf("%s: LBA %d holds the old pattern, though all of the first %d sectors were acknowledged", r.when, *d.FirstOld, k.AckedPrefix)
		}
		if d.LastNew != nil && *d.LastNew >= uint64(k.Submitted) {
			t.Errorf("%s: LBA %d holds the new pattern, though only the first %d sectors were sent", r.when, *d.LastNew, k.Submitted)
		}
	}
	var ak, ar agentproto.CheckData
	decode(t, res, afterKill, &ak)
	decode(t, res, afterRecovery, &ar)
	// Recovery only completes writes the flog recorded; it never takes
	// one back.
	if ar.Old > ak.Old {
		t.Errorf("recovery turned %d new sectors back into old ones", ar.Old-ak.Old)
	}
	if mode.name == "devdax" {
		checkDevDAXOnTheHost(t, img, ns.Output, ar, seedN, seedV)
	}
}

// checkDevDAXOnTheHost reads the BTT the guest wrote on /dev/dax0.0 out of
// the NVDIMM's backing file, where the kernel's devdax info block (struct
// nd_pfn_sb, drivers/nvdimm/pfn.h, 4 KiB into the namespace) says the
// device's data starts, and has the host's nvblk check it and read the
// overwritten range: the guest's stores reached the file QEMU maps, and
// the host sees what the guest saw after recovery.
func checkDevDAXOnTheHost(t *testing.T, nvdimm, ndctlJSON string, guestView agentproto.CheckData, seedN, seedV string) {
	t.Helper()
	var ns struct {
		DAXRegion struct {
			Devices []struct {
				Chardev string `json:"chardev"`
				Size    int64  `json:"size"`
			} `json:"devices"`
		} `json:"daxregion"`
	}
	if err := json.Unmarshal([]byte(jsonPart(ndctlJSON)), &ns); err != nil || len(ns.DAXRegion.Devices) != 1 {
		t.Fatalf("ndctl create-namespace output: %v, %d dax devices\n%s", err, len(ns.DAXRegion.Devices), ndctlJSON)
	}
	raw, err := os.ReadFile(nvdimm)
	if err != nil {
		t.Fatal(err)
	}
	sb := raw[4096 : 4096+4096]
	if sig := string(sb[:16]); sig != "NVDIMM_DAX_INFO\x00" {
		t.Fatalf("no devdax info block 4 KiB into the NVDIMM: signature %q", sig)
	}
	dataoff := int64(binary.LittleEndian.Uint64(sb[56:]))
	startPad := int64(binary.LittleEndian.Uint32(sb[76:]))
	endTrunc := int64(binary.LittleEndian.Uint32(sb[80:]))
	start, end := startPad+dataoff, int64(len(raw))-endTrunc
	if want := ns.DAXRegion.Devices[0].Size; end-start != want {
		t.Fatalf("devdax info block: data [%d, %d) is %d bytes, ndctl says %s has %d", start, end, end-start, ns.DAXRegion.Devices[0].Chardev, want)
	}
	medium := filepath.Join(t.TempDir(), "dax0.0.img")
	if err := os.WriteFile(medium, raw[start:end], 0o644); err != nil {
		t.Fatal(err)
	}
	suite.CheckImage(t, medium)
	img := guest.Image{Path: medium, SectorSize: sectorSize}
	got := suite.ReadImage(t, img, 0, verifyCount)
	var host agentproto.CheckData
	for lba := uint64(0); lba < verifyCount; lba++ {
		sector := got[lba*sectorSize : (lba+1)*sectorSize]
		host.Checked++
		switch {
		case bytes.Equal(sector, agentproto.Pattern(seedN, lba, sectorSize)):
		case bytes.Equal(sector, agentproto.Pattern(seedV, lba, sectorSize)):
			host.Old++
		default:
			host.Differ++
		}
	}
	if host.Differ != 0 || host.Old != guestView.Old {
		t.Errorf("the host reads %d torn and %d old sectors in dax0.0's data in the NVDIMM file; the guest read 0 and %d", host.Differ, host.Old, guestView.Old)
	}
	t.Logf("devdax: the host finds dax0.0's data at [%d, %d) of the NVDIMM file: nvblk check passes there, and %d sectors new, %d old, as the guest read them",
		start, end, host.Checked-host.Old, host.Old)
}

func lbaString(p *uint64) string {
	if p == nil {
		return "none"
	}
	return strconv.FormatUint(*p, 10)
}

// killSeed picks the kill moment's seed, logged with it: NVBLK_PMEM_SEED
// replays a run.
func killSeed(t *testing.T) uint64 {
	if s := os.Getenv("NVBLK_PMEM_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("NVBLK_PMEM_SEED=%q: %v", s, err)
		}
		return n
	}
	return uint64(time.Now().UnixNano())
}

func decode(t *testing.T, res *guest.Result, step int, v any) {
	t.Helper()
	if err := res.Decode(step, v); err != nil {
		t.Fatal(err)
	}
}

// writeBackFor is the instruction pmem must choose on the guest's CPU, from
// the flags /proc/cpuinfo shows: CLWB, else CLFLUSHOPT, else CLFLUSH.
func writeBackFor(t *testing.T, cpuinfo string) string {
	t.Helper()
	for _, line := range strings.Split(cpuinfo, "\n") {
		name, flags, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != "flags" {
			continue
		}
		set := map[string]bool{}
		for _, f := range strings.Fields(flags) {
			set[f] = true
		}
		for _, insn := range []string{"clwb", "clflushopt", "clflush"} {
			if set[insn] {
				return insn
			}
		}
		t.Fatalf("guest CPU flags name no cache-line write-back: %s", flags)
	}
	t.Fatalf("no flags line in the guest's /proc/cpuinfo (%d bytes read):\n%s", len(cpuinfo), cpuinfo)
	return ""
}

// startupLine is serve's "serving vhost-user-blk" line from its log.
func startupLine(log string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `msg="serving vhost-user-blk"`) {
			return line
		}
	}
	return ""
}

var logField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S*)`)

// logFields splits a logrus text line into its key=value fields.
func logFields(line string) map[string]string {
	out := map[string]string{}
	for _, m := range logField.FindAllStringSubmatch(line, -1) {
		v := m[2]
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		}
		out[m[1]] = v
	}
	return out
}

// jsonPart is a program's output from its first "{": exec reports stdout
// and stderr together.
func jsonPart(out string) string {
	if i := strings.Index(out, "{"); i >= 0 {
		return out[i:]
	}
	return out
}

func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}
