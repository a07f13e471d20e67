// Command agent is /init of the test guests: it loads the kernel modules the
// harness packed, mounts the pseudo file systems, runs the script of steps
// the test baked into the initramfs, reports each step on its own serial
// port (ttyS1, so kernel messages on ttyS0 never split a report line) and
// powers the machine off.
//
// It is built static (CGO_ENABLED=0) by the harness; it is not meant to run
// on a host.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// reportPort is the second serial port, which the harness reads reports
// from. The console (ttyS0) gets a copy for people reading the log.
const reportPort = "/dev/ttyS1"

type agent struct {
	port    *os.File
	console *os.File
}

func main() {
	a := &agent{console: os.Stdout}
	progress = a.progress
	defer a.powerOff()
	defer func() {
		if r := recover(); r != nil {
			a.report(agentproto.Report{Step: -1, Op: agentproto.OpPanic,
				Error: fmt.Sprintf("%v\n%s", r, debug.Stack())})
		}
	}()

	start := time.Now()
	if err := mountPseudoFileSystems(); err != nil {
		a.report(agentproto.Report{Step: -1, Op: agentproto.OpBoot, Error: err.Error()})
		return
	}
	if f, err := os.OpenFile(reportPort, os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		// Raw mode: no "\n" -> "\r\n" translation, no echo games.
		if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			t.Oflag &^= unix.OPOST
			_ = unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
		}
		a.port = f
	}
	a.report(agentproto.Report{Step: -1, Op: agentproto.OpBoot, OK: true,
		Data: mustJSON(agentproto.BootData{UptimeSeconds: uptime(), Kernel: kernelRelease()})})

	mods, err := loadModules()
	a.report(agentproto.Report{Step: -1, Op: agentproto.OpModules, OK: err == nil,
		Error: errString(err), Data: mustJSON(mods), MS: time.Since(start).Milliseconds()})
	if err != nil {
		return
	}

	script, err := readScript()
	if err != nil {
		a.report(agentproto.Report{Step: -1, Op: agentproto.OpDone, Error: err.Error()})
		return
	}
	for i, st := range script {
		t0 := time.Now()
		if st.Op == agentproto.OpSwitchRoot {
			// Success is only known from the new init's reports; this one
			// says the old /init got as far as exec.
			a.report(agentproto.Report{Step: i, Op: st.Op, OK: true, MS: time.Since(t0).Milliseconds()})
			err := switchRoot(st)
			a.report(agentproto.Report{Step: i, Op: st.Op, Error: errString(err)})
			return
		}
		stepIndex = i
		data, err := runExpecting(st)
		rep := agentproto.Report{Step: i, Op: st.Op, OK: err == nil, Error: errString(err),
			MS: time.Since(t0).Milliseconds()}
		if data != nil {
			rep.Data = mustJSON(data)
		}
		a.report(rep)
		if err != nil {
			// Later steps build on earlier ones; the test sees where it stopped.
			return
		}
	}
	unix.Sync()
	a.report(agentproto.Report{Step: -1, Op: agentproto.OpDone, OK: true})
}

func (a *agent) report(r agentproto.Report) {
	line := agentproto.ReportPrefix + string(mustJSON(r)) + "\n"
	if a.port != nil {
		_, _ = a.port.Write([]byte(line))
	}
	_, _ = a.console.Write([]byte(line))
}

func (a *agent) powerOff() {
	unix.Sync()
	if a.port != nil {
		_ = unix.IoctlSetInt(int(a.port.Fd()), unix.TCSBRK, 1) // drain the UART
	}
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// If power-off failed, returning from init panics the kernel, and
	// panic=-1 with QEMU's -no-reboot ends the machine anyway.
}

func mountPseudoFileSystems() error {
	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dir, m.fs, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fs, m.dir, err)
		}
	}
	return nil
}

func loadModules() ([]string, error) {
	list, err := os.ReadFile(agentproto.ModuleListPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var loaded []string
	for _, path := range strings.Fields(string(list)) {
		f, err := os.Open(path)
		if err != nil {
			return loaded, err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return loaded, fmt.Errorf("finit_module %s: %w", path, err)
		}
		loaded = append(loaded, strings.TrimSuffix(filepath.Base(path), ".ko"))
	}
	return loaded, nil
}

func readScript() ([]agentproto.Step, error) {
	b, err := os.ReadFile(agentproto.ScriptPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var steps []agentproto.Step
	if err := json.Unmarshal(b, &steps); err != nil {
		return nil, fmt.Errorf("script %s: %w", agentproto.ScriptPath, err)
	}
	return steps, nil
}

// runExpecting runs st and, for a step that must fail, turns the
// expected failure into success and success into a failure.
func runExpecting(st agentproto.Step) (any, error) {
	data, err := run(st)
	if len(st.ExpectError) == 0 {
		return data, err
	}
	if err == nil {
		return data, fmt.Errorf("succeeded, want an error containing one of %q", st.ExpectError)
	}
	for _, want := range st.ExpectError {
		if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
			return agentproto.ExpectedErrorData{Error: err.Error()}, nil
		}
	}
	return nil, fmt.Errorf("failed with %w, want an error containing one of %q", err, st.ExpectError)
}

func run(st agentproto.Step) (any, error) {
	switch st.Op {
	case agentproto.OpWait:
		if st.Value != "" {
			return nil, waitForText(st.Path, st.Value, time.Duration(st.TimeoutMS)*time.Millisecond)
		}
		return nil, waitFor(st.Path, time.Duration(st.TimeoutMS)*time.Millisecond)
	case agentproto.OpRead:
		return readData(st.Path, st.Size)
	case agentproto.OpWrite:
		if st.Data == nil && st.Seed != "" {
			return nil, writeFile(st.Path, agentproto.PatternBytes(st.Seed, st.Size))
		}
		if st.Data != nil {
			return nil, writeFile(st.Path, st.Data)
		}
		return nil, writeFile(st.Path, []byte(st.Value))
	case agentproto.OpList:
		return list(st.Path)
	case agentproto.OpMakeBTT:
		return makeBTT(st)
	case agentproto.OpWriteSectors:
		return nil, writeSectors(st)
	case agentproto.OpReadSectors:
		return readSectors(st)
	case agentproto.OpExec:
		return execute(st)
	case agentproto.OpMount:
		if err := os.MkdirAll(st.Target, 0o755); err != nil {
			return nil, err
		}
		return nil, unix.Mount(st.Source, st.Target, st.FSType, 0, st.Options)
	case agentproto.OpUmount:
		return nil, unix.Unmount(st.Target, 0)
	case agentproto.OpSync:
		unix.Sync()
		return nil, nil
	case agentproto.OpFlush:
		return nil, flush(st.Device)
	case agentproto.OpDiscard:
		return nil, rangeIoctl(st, unix.BLKDISCARD)
	case agentproto.OpZeroOut:
		return nil, rangeIoctl(st, unix.BLKZEROOUT)
	case agentproto.OpCheckSectors:
		return checkSectors(st)
	case agentproto.OpParallel:
		return parallelWrite(st)
	case agentproto.OpWaitGone:
		return nil, waitGone(st.Path, time.Duration(st.TimeoutMS)*time.Millisecond)
	case agentproto.OpCopy:
		return nil, copyFile(st.Path, st.Target)
	case agentproto.OpWriteTree:
		return writeTree(st.Path, st.Seed, st.Count)
	case agentproto.OpHashTree:
		return hashTree(st.Path)
	case agentproto.OpRootMount:
		return rootMount(st.Device)
	case agentproto.OpSeqWrite:
		return seqWrite(st)
	case agentproto.OpSpawn:
		return spawn(st)
	case agentproto.OpStop:
		return stop(st)
	case agentproto.OpVhostVerify:
		return vhostVerify(st)
	case agentproto.OpStreamWrite:
		return streamWrite(st)
	}
	return nil, fmt.Errorf("unknown op %q", st.Op)
}

func waitFor(path string, timeout time.Duration) error {
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = present(path); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v: %w", path, timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// present reports whether path is there and, for a block device node,
// usable. devtmpfs creates /dev/vda inside the kernel's device_add(),
// before device_add_disk() links /sys/block/vda, registers the request
// queue (queue/, mq/) and adds the bdev; until that last step open(2)
// fails with ENXIO. A node that opens has all of its sysfs in place, so
// the steps after a wait may read /sys/block/<disk>/... at once.
func present(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// waitForText waits until the file at path holds text: a program spawned
// in the background says so in its log once it is ready (nvblk serve
// prints its "# attach" block only when every socket listens).
func waitForText(path, text string, timeout time.Duration) error {
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(text)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not say %q within %v (err %v): %q", path, text, timeout, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readData reports a file's size and digest, and its text when it is at
// most limit bytes (4096 when zero).
func readData(path string, limit int) (agentproto.ReadData, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return agentproto.ReadData{}, err
	}
	sum := sha256.Sum256(b)
	d := agentproto.ReadData{Size: len(b), SHA256: hex.EncodeToString(sum[:])}
	if limit == 0 {
		limit = 4096
	}
	if len(b) <= limit {
		d.Text = string(b)
	}
	return d, nil
}

func writeFile(path string, value []byte) error {
	// Sysfs attributes want the whole value in one write(2).
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(value); err != nil {
		f.Close()
		return fmt.Errorf("write %d bytes to %s: %w", len(value), path, err)
	}
	if !strings.HasPrefix(path, "/sys/") && !strings.HasPrefix(path, "/proc/") {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func list(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// makeBTT does what ndctl's "create-namespace --mode=sector" does on a
// label-less namespace: detach the namespace from its raw driver, configure
// the region's BTT seed device, and bind the seed to whichever nd driver
// takes it (ndctl tries them all; in Linux it is nd_pmem).
func makeBTT(st agentproto.Step) (agentproto.MakeBTTData, error) {
	var d agentproto.MakeBTTData
	nd := "/sys/bus/nd"
	do := func(path, value string) error {
		err := writeFile(path, []byte(value))
		if err != nil {
			d.Trace = append(d.Trace, fmt.Sprintf("%s <- %s: refused: %v", path, value, errors.Unwrap(err)))
		} else {
			d.Trace = append(d.Trace, fmt.Sprintf("%s <- %s", path, value))
		}
		return err
	}
	ns := filepath.Join(nd, "devices", st.Namespace)
	if err := waitFor(filepath.Join(ns, "driver"), 10*time.Second); err != nil {
		return d, fmt.Errorf("namespace never bound to a driver: %w", err)
	}
	drv, err := os.Readlink(filepath.Join(ns, "driver"))
	if err != nil {
		return d, err
	}
	if err := do(filepath.Join(nd, "drivers", filepath.Base(drv), "unbind"), st.Namespace); err != nil {
		return d, err
	}
	seed, err := os.ReadFile(filepath.Join(nd, "devices", st.Region, "btt_seed"))
	if err != nil {
		return d, err
	}
	d.BTT = strings.TrimSpace(string(seed))
	btt := filepath.Join(nd, "devices", d.BTT)
	for _, kv := range [][2]string{
		{"sector_size", strconv.Itoa(st.SectorSize)},
		{"uuid", st.UUID},
		{"namespace", st.Namespace},
	} {
		if err := do(filepath.Join(btt, kv[0]), kv[1]); err != nil {
			return d, err
		}
	}
	drivers, err := os.ReadDir(filepath.Join(nd, "drivers"))
	if err != nil {
		return d, err
	}
	for _, drv := range drivers {
		if err := do(filepath.Join(nd, "drivers", drv.Name(), "bind"), d.BTT); err == nil {
			break
		}
	}
	if _, err := os.Stat(filepath.Join(btt, "driver")); err != nil {
		return d, fmt.Errorf("no nd driver took %s", d.BTT)
	}
	blocks, err := os.ReadDir(filepath.Join(btt, "block"))
	if err != nil || len(blocks) != 1 {
		return d, fmt.Errorf("%s has no single block device: %v %v", d.BTT, blocks, err)
	}
	d.Block = blocks[0].Name()
	return d, waitFor("/dev/"+d.Block, 10*time.Second)
}

func writeSectors(st agentproto.Step) error {
	if st.Data == nil && st.Seed != "" {
		st.Data = agentproto.Patterns(st.Seed, st.LBA, st.Count, st.SectorSize)
	}
	if st.SectorSize == 0 || len(st.Data) == 0 || len(st.Data)%st.SectorSize != 0 {
		return fmt.Errorf("%d bytes is not whole %d-byte sectors", len(st.Data), st.SectorSize)
	}
	if st.CPU != nil {
		// The O_DIRECT write below submits its bios from this thread, so
		// they run on the pinned CPU.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var set unix.CPUSet
		set.Set(*st.CPU)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return fmt.Errorf("pin to CPU %d: %w", *st.CPU, err)
		}
		defer func() {
			var all unix.CPUSet
			for i := 0; i < runtime.NumCPU(); i++ {
				all.Set(i)
			}
			_ = unix.SchedSetaffinity(0, &all)
		}()
	}
	f, err := os.OpenFile(st.Device, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, err := alignedBuffer(len(st.Data))
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	copy(buf, st.Data)
	if _, err := f.WriteAt(buf, int64(st.LBA)*int64(st.SectorSize)); err != nil {
		return err
	}
	return f.Sync()
}

// alignedBuffer is page-aligned memory for O_DIRECT, which moves data
// between the caller's buffer and the device without the page cache, so the
// bios are submitted (and the BTT lane taken) by the calling thread, and
// reads come from the BTT rather than from what the page cache remembers.
func alignedBuffer(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

func readSectors(st agentproto.Step) ([]agentproto.SectorDigest, error) {
	f, err := os.OpenFile(st.Device, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf, err := alignedBuffer(st.SectorSize)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(buf)
	zero := make([]byte, st.SectorSize)
	var out []agentproto.SectorDigest
	for i := 0; i < st.Count; i++ {
		lba := st.LBA + uint64(i)
		if _, err := f.ReadAt(buf, int64(lba)*int64(st.SectorSize)); err != nil {
			return out, fmt.Errorf("lba %d: %w", lba, err)
		}
		sum := sha256.Sum256(buf)
		out = append(out, agentproto.SectorDigest{LBA: lba, SHA256: hex.EncodeToString(sum[:]),
			Zero: bytes.Equal(buf, zero), Head: hex.EncodeToString(buf[:16])})
	}
	return out, nil
}

func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return -1
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(err.Error())
	}
	return b
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
