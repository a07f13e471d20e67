package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// DefaultTimeout bounds one machine's life. A guest boots to the agent in
// about 10 s under TCG on two cores; three minutes leaves room for a loaded
// CI box without letting a hung guest eat the suite's budget.
const DefaultTimeout = 3 * time.Minute

// Config describes one machine.
type Config struct {
	MemoryMiB int // guest RAM; 256 when zero
	CPUs      int // 1 when zero
	// CPU is the -cpu model; "max" when empty.
	CPU string
	// NVDIMMs are image files exposed as label-less NVDIMMs, each becoming
	// the whole of namespaceN.0 in the guest. Their size is the file's.
	NVDIMMs []string
	// SharedMemory backs guest RAM with a shared memfd of the same size,
	// which vhost-user back ends need to map it.
	SharedMemory bool
	Args         []string // appended to the QEMU command line
	Append       string   // appended to the kernel command line
	Timeout      time.Duration
	Steps        []agentproto.Step
	// Initramfs is the base archive the script is appended to; the kit's
	// when empty (see Kit.MinimalInitramfs).
	Initramfs string
}

// Keep says whether NVBLK_GUEST_KEEP asks to keep the kit and each
// machine's files after the tests, to rerun QEMU by hand.
func Keep() bool { return os.Getenv("NVBLK_GUEST_KEEP") != "" }

// Machine is a running QEMU.
type Machine struct {
	t    testing.TB
	dir  string
	cmd  *exec.Cmd
	bin  string
	args []string
	// incoming is the URI a machine of StartIncoming listens on for the
	// migration stream.
	incoming string
	mon      *qmp.SocketMonitor
	started  time.Time
	exited   chan struct{}
	waitErr  error
	stderr   bytes.Buffer

	mu        sync.Mutex
	reports   []agentproto.Report
	firstBoot time.Duration // host time from start to the agent's boot report
	events    []qmp.Event
	tailOff   int64
	partial   []byte
}

// Result is what a machine did, once it is off.
type Result struct {
	Reports []agentproto.Report
	// BootToAgent is the host wall time from starting QEMU until the agent
	// reported; GuestUptime is the kernel's own uptime at that moment.
	BootToAgent time.Duration
	GuestUptime float64
	Wall        time.Duration
}

// Start launches QEMU with the kit's kernel and initramfs plus cfg.Steps,
// and connects to its QMP socket. The machine is killed and its files
// removed when the test ends; if the test failed, the console is logged.
func Start(t testing.TB, kit *Kit, cfg Config) *Machine {
	t.Helper()
	return start(t, kit, cfg, false)
}

func start(t testing.TB, kit *Kit, cfg Config, incoming bool) *Machine {
	t.Helper()
	bin, err := qemuBinary()
	if err != nil {
		t.Fatal(err)
	}
	m := &Machine{t: t, dir: t.TempDir(), exited: make(chan struct{})}
	if Keep() {
		dir, err := os.MkdirTemp("", "nvblk-guest-")
		if err != nil {
			t.Fatal(err)
		}
		m.dir = dir
		t.Logf("keeping the machine's initramfs, consoles and QMP socket in %s", dir)
	}
	script, err := json.Marshal(cfg.Steps)
	if err != nil {
		t.Fatalf("encode agent script: %v", err)
	}
	initrd := filepath.Join(m.dir, "initramfs.cpio")
	if err := kit.initramfsWithScript(initrd, cfg.Initramfs, script); err != nil {
		t.Fatal(err)
	}
	m.args, err = commandLine(kit, cfg, initrd, m.dir)
	if err != nil {
		t.Fatal(err)
	}
	if incoming {
		// defer: QEMU listens only when told to (migrate-incoming), so
		// that StartIncoming returns once it does and the source never
		// races it.
		m.args = append(m.args, "-incoming", "defer")
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	m.bin = bin
	t.Logf("QEMU command line:\n%s", m.CommandLine())

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	m.cmd = exec.CommandContext(ctx, bin, m.args...)
	m.cmd.Stdout = &m.stderr
	m.cmd.Stderr = &m.stderr
	// Own process group, so that cleanup reaches anything QEMU spawns;
	// and die with the test binary.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	m.cmd.Cancel = func() error { return syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL) }
	m.started = time.Now()
	if err := m.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start QEMU: %v", err)
	}
	go func() {
		m.waitErr = m.cmd.Wait()
		if ctx.Err() != nil {
			m.waitErr = fmt.Errorf("QEMU killed after %v timeout: %w", timeout, m.waitErr)
		}
		cancel()
		close(m.exited)
	}()
	go m.tail()
	t.Cleanup(func() {
		if m.mon != nil {
			_ = m.mon.Disconnect()
		}
		select {
		case <-m.exited:
		default:
			_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
			<-m.exited
		}
		if t.Failed() || os.Getenv("NVBLK_GUEST_CONSOLE") != "" {
			m.logConsole()
		}
	})

	if err := m.connectQMP(); err != nil {
		t.Fatal(err)
	}
	return m
}

// Run starts a machine, waits until the agent powers it off, and fails the
// test if QEMU failed or the agent did not finish its script.
func Run(t testing.TB, kit *Kit, cfg Config) *Result {
	t.Helper()
	m := Start(t, kit, cfg)
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}
	return res
}

func commandLine(kit *Kit, cfg Config, initrd, dir string) ([]string, error) {
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 256
	}
	cpus := max(cfg.CPUs, 1)
	cpu := cfg.CPU
	if cpu == "" {
		cpu = "max"
	}
	machine := "q35,accel=tcg"
	memArg := fmt.Sprintf("%dM", mem)
	var args []string
	if len(cfg.NVDIMMs) > 0 {
		machine += ",nvdimm=on"
		var total int64
		for i, img := range cfg.NVDIMMs {
			st, err := os.Stat(img)
			if err != nil {
				return nil, fmt.Errorf("NVDIMM image: %w", err)
			}
			total += st.Size()
			args = append(args,
				"-object", fmt.Sprintf("memory-backend-file,id=nv%d,share=on,mem-path=%s,size=%d", i, img, st.Size()),
				"-device", fmt.Sprintf("nvdimm,id=nvdimm%d,memdev=nv%d", i, i))
		}
		// maxmem covers RAM plus every NVDIMM, rounded up to a GiB.
		maxMiB := (int64(mem)<<20 + total + 1<<30 - 1) >> 30 << 10
		memArg += fmt.Sprintf(",slots=%d,maxmem=%dM", max(2, len(cfg.NVDIMMs)), maxMiB)
	}
	if cfg.SharedMemory {
		machine += ",memory-backend=mem"
		args = append(args, "-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", mem))
	}
	appendLine := "console=ttyS0 panic=-1 loglevel=7"
	if cfg.Append != "" {
		appendLine += " " + cfg.Append
	}
	head := []string{
		"-machine", machine, "-cpu", cpu, "-m", memArg, "-smp", strconv.Itoa(cpus),
		"-nographic", "-no-reboot", "-monitor", "none",
		"-kernel", kit.Kernel, "-initrd", initrd, "-append", appendLine,
		"-serial", "file:" + filepath.Join(dir, "console.log"),
		"-serial", "file:" + filepath.Join(dir, "agent.log"),
		"-qmp", fmt.Sprintf("unix:%s,server=on,wait=off", filepath.Join(dir, "qmp.sock")),
	}
	return append(append(head, args...), cfg.Args...), nil
}

func (m *Machine) connectQMP() error {
	sock := filepath.Join(m.dir, "qmp.sock")
	deadline := time.Now().Add(30 * time.Second)
	for {
		mon, err := qmp.NewSocketMonitor("unix", sock, time.Second)
		if err == nil {
			if err := handshake(mon, qmpHandshakeTimeout); err != nil {
				return err
			}
			m.mon = mon
			// go-qemu hands events over an unbuffered channel and blocks
			// command replies behind them, so they are drained from the
			// start and kept for WaitEvent.
			events, err := mon.Events(context.Background())
			if err != nil {
				return fmt.Errorf("QMP events: %w", err)
			}
			go func() {
				for e := range events {
					m.mu.Lock()
					m.events = append(m.events, e)
					m.mu.Unlock()
				}
			}()
			return nil
		}
		select {
		case <-m.exited:
			return fmt.Errorf("QEMU exited before QMP came up: %v\n%s", m.waitErr, m.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("QMP socket %s: %w", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// qmpHandshakeTimeout bounds QMP's greeting and qmp_capabilities. The
// monitor greets from its own thread, but runs commands on QEMU's main
// thread, which device set-up can hold: a vhost-user-blk device waits in
// realize for its back-end's replies, forever if the back-end never
// answers (a connection left in a busy back-end's listen backlog is
// connected as far as QEMU can tell).
const qmpHandshakeTimeout = 30 * time.Second

func handshake(mon *qmp.SocketMonitor, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("QMP handshake: %w", err)
		}
		return nil
	case <-time.After(timeout):
		// Closing the socket ends the blocked Connect.
		_ = mon.Disconnect()
		<-done
		return fmt.Errorf("QMP handshake not done after %v: QEMU runs no command until its devices are set up "+
			"(is a vhost-user back-end not answering the device's handshake?)", timeout)
	}
}

// CommandLine is QEMU's command line, quoted for a shell.
func (m *Machine) CommandLine() string { return m.bin + " " + shellQuote(m.args) }

// QMP runs one QMP command and returns its "return" value.
func (m *Machine) QMP(command string, arguments any) (json.RawMessage, error) {
	cmd := map[string]any{"execute": command}
	if arguments != nil {
		cmd["arguments"] = arguments
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	raw, err := m.mon.Run(b)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", command, err)
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return nil, fmt.Errorf("QMP %s reply %s: %w", command, raw, err)
	}
	return resp.Return, nil
}

// Status is QMP query-status's "status", e.g. "running".
func (m *Machine) Status() (string, error) {
	raw, err := m.QMP("query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	return st.Status, json.Unmarshal(raw, &st)
}

// WaitEvent waits for a QMP event named name (say DEVICE_DELETED) whose
// data match: every key of match equals the event's value. Events seen
// since the machine started count, so call it after the command.
func (m *Machine) WaitEvent(name string, match map[string]any, timeout time.Duration) (qmp.Event, error) {
	deadline := time.After(timeout)
	for {
		m.mu.Lock()
		for _, e := range m.events {
			if e.Event == name && eventMatches(e, match) {
				m.mu.Unlock()
				return e, nil
			}
		}
		m.mu.Unlock()
		select {
		case <-m.exited:
			return qmp.Event{}, fmt.Errorf("machine exited without a %s event: %v", name, m.waitErr)
		case <-deadline:
			return qmp.Event{}, fmt.Errorf("no %s event %v within %v", name, match, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func eventMatches(e qmp.Event, match map[string]any) bool {
	for k, v := range match {
		if fmt.Sprint(e.Data[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// WaitStep waits for the agent's report of script step i, the way
// WaitReport waits for an op: a test that acts on the machine between
// steps (QMP hot plug) learns the guest got there.
func (m *Machine) WaitStep(i int, timeout time.Duration) (agentproto.Report, error) {
	find := func() (agentproto.Report, bool) {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, r := range m.reports {
			if r.Step == i {
				return r, true
			}
		}
		return agentproto.Report{}, false
	}
	deadline := time.After(timeout)
	for {
		if r, ok := find(); ok {
			return r, nil
		}
		select {
		case <-m.exited:
			m.readAgent()
			if r, ok := find(); ok {
				return r, nil
			}
			return agentproto.Report{}, fmt.Errorf("machine exited without a report of step %d: %v%s", i, m.waitErr, m.failedSteps())
		case <-deadline:
			return agentproto.Report{}, fmt.Errorf("no report of step %d within %v", i, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// failedSteps names the reports that failed, so a test that waited for a
// later step says why the agent stopped short of it.
func (m *Machine) failedSteps() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	for _, r := range m.reports {
		if !r.OK {
			fmt.Fprintf(&b, "; step %d (%s) failed: %s", r.Step, r.Op, r.Error)
		}
	}
	return b.String()
}

// Reports is what the agent reported so far.
func (m *Machine) Reports() []agentproto.Report {
	m.readAgent()
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]agentproto.Report(nil), m.reports...)
}

// Pid is QEMU's process id, for a test that looks at what QEMU holds
// (/proc/PID/fd).
func (m *Machine) Pid() int { return m.cmd.Process.Pid }

// Kill ends QEMU with SIGKILL, the way a crash or the OOM killer would:
// no device reset, no vhost-user goodbye, requests left in flight.
func (m *Machine) Kill() {
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	<-m.exited
	m.readAgent()
}

// WaitReport waits for the agent's first report of op.
func (m *Machine) WaitReport(op string, timeout time.Duration) (agentproto.Report, error) {
	deadline := time.After(timeout)
	for {
		m.mu.Lock()
		for _, r := range m.reports {
			if r.Op == op {
				m.mu.Unlock()
				return r, nil
			}
		}
		m.mu.Unlock()
		select {
		case <-m.exited:
			m.readAgent()
			return agentproto.Report{}, fmt.Errorf("machine exited without an agent %q report: %v%s", op, m.waitErr, m.failedSteps())
		case <-deadline:
			return agentproto.Report{}, fmt.Errorf("no agent %q report within %v", op, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Wait waits for QEMU to exit on its own (the agent powers off) and
// returns what the agent reported.
func (m *Machine) Wait() (*Result, error) {
	<-m.exited
	m.readAgent()
	wall := time.Since(m.started)
	if m.mon != nil {
		_ = m.mon.Disconnect()
		m.mon = nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	res := &Result{Reports: append([]agentproto.Report(nil), m.reports...), BootToAgent: m.firstBoot, Wall: wall}
	for _, r := range res.Reports {
		if r.Op == agentproto.OpBoot {
			var b agentproto.BootData
			_ = json.Unmarshal(r.Data, &b)
			res.GuestUptime = b.UptimeSeconds
		}
	}
	if m.waitErr != nil {
		return res, fmt.Errorf("QEMU: %w\n%s", m.waitErr, m.stderr.String())
	}
	return res, nil
}

func (m *Machine) tail() {
	for {
		select {
		case <-m.exited:
			return
		case <-time.After(50 * time.Millisecond):
			m.readAgent()
		}
	}
}

// readAgent picks up whole report lines the agent added to its serial file.
func (m *Machine) readAgent() {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, err := os.Open(filepath.Join(m.dir, "agent.log"))
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		n, _ := f.ReadAt(buf, m.tailOff)
		if n == 0 {
			return
		}
		m.tailOff += int64(n)
		m.partial = append(m.partial, buf[:n]...)
		for {
			i := bytes.IndexByte(m.partial, '\n')
			if i < 0 {
				break
			}
			line := strings.TrimSpace(string(m.partial[:i]))
			m.partial = m.partial[i+1:]
			_, js, ok := strings.Cut(line, agentproto.ReportPrefix)
			if !ok {
				continue
			}
			var r agentproto.Report
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				r = agentproto.Report{Step: -1, Op: "garbled", Error: fmt.Sprintf("%v: %q", err, line)}
			}
			if r.Op == agentproto.OpBoot && m.firstBoot == 0 {
				m.firstBoot = time.Since(m.started)
			}
			m.reports = append(m.reports, r)
		}
	}
}

// Console is the guest's ttyS0 so far: kernel messages and report copies.
func (m *Machine) Console() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "console.log"))
	return string(b)
}

func (m *Machine) logConsole() {
	m.t.Logf("QEMU command line: %s", m.CommandLine())
	m.t.Logf("QEMU output:\n%s", m.stderr.String())
	m.t.Logf("guest console:\n%s", m.Console())
}

// Finished says why the script did not run to the end, or nil.
func (r *Result) Finished() error {
	var errs []error
	done := false
	for _, rep := range r.Reports {
		if !rep.OK {
			errs = append(errs, fmt.Errorf("agent step %d (%s) failed: %s; data %s", rep.Step, rep.Op, rep.Error, rep.Data))
		}
		if rep.Op == agentproto.OpDone && rep.OK {
			done = true
		}
	}
	if !done {
		errs = append(errs, fmt.Errorf("agent did not finish its script (%d reports)", len(r.Reports)))
	}
	return errors.Join(errs...)
}

// Step returns the report of script step i.
func (r *Result) Step(i int) (agentproto.Report, bool) {
	for _, rep := range r.Reports {
		if rep.Step == i && rep.Op != agentproto.OpBoot && rep.Op != agentproto.OpModules &&
			rep.Op != agentproto.OpDone && rep.Op != agentproto.OpPanic {
			return rep, true
		}
	}
	return agentproto.Report{}, false
}

// Stages splits the reports at each agent boot: a guest that switches root
// runs one agent from the initramfs and another from the new root, and
// each numbers its steps from 0.
func (r *Result) Stages() []*Result {
	var out []*Result
	for _, rep := range r.Reports {
		if rep.Op == agentproto.OpBoot || len(out) == 0 {
			out = append(out, &Result{BootToAgent: r.BootToAgent, Wall: r.Wall})
		}
		cur := out[len(out)-1]
		cur.Reports = append(cur.Reports, rep)
	}
	return out
}

// Decode unmarshals step i's data into v.
func (r *Result) Decode(i int, v any) error {
	rep, ok := r.Step(i)
	if !ok {
		return fmt.Errorf("no report for step %d", i)
	}
	if err := json.Unmarshal(rep.Data, v); err != nil {
		return fmt.Errorf("step %d (%s) data %s: %w", i, rep.Op, rep.Data, err)
	}
	return nil
}

func shellQuote(args []string) string {
	var sb strings.Builder
	for i, a := range args {
		if i > 0 {
			sb.WriteByte(' ')
		}
		if strings.ContainsAny(a, " \"'$\\,") && !strings.ContainsAny(a, "'") {
			sb.WriteString("'" + a + "'")
		} else {
			sb.WriteString(a)
		}
	}
	return sb.String()
}
