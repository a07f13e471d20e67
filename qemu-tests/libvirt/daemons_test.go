package libvirt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

// installHint ends every error about missing libvirt pieces.
const installHint = "run scripts/install-deps.sh (it installs libvirt-daemon-system and libvirt-clients)"

// privateDirs are the system directories a root libvirtd and virtlogd use,
// which neither can be told to move; each is a directory of the private
// tree, bind-mounted over it in the daemons' mount namespace.
var privateDirs = []struct{ sub, system string }{
	{"etc", "/etc/libvirt"},         // libvirtd.conf, qemu.conf, virtlogd.conf; defined domains in qemu/
	{"run", "/run/libvirt"},         // libvirt-sock, virtlogd-sock; qemu/NAME.pid and the live domain status
	{"lib", "/var/lib/libvirt"},     // qemu/domain-N-NAME: what QEMU keeps while it runs
	{"log", "/var/log/libvirt"},     // qemu/NAME.log: every QEMU command line, and QEMU's stderr
	{"cache", "/var/cache/libvirt"}, // qemu/capabilities: libvirt's probe of the QEMU binary
}

// The private configuration. Anything not set is Debian's default.
const (
	libvirtdConf = `# Only the test, as root, connects, on the private socket; no polkit
# (there is no D-Bus on CI).
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:stderr"
`
	virtlogdConf = `log_outputs = "3:stderr"
`
	// user and group stay libvirt-qemu, the default, and the security
	// driver the default (DAC; AppArmor where the kernel has it).
	qemuConf = `# With no systemd (CI), libvirtd would create machine/ in every host
# cgroup hierarchy itself and leave it there.
cgroup_controllers = [ ]
`
)

// daemons is the test's libvirtd and virtlogd.
type daemons struct {
	virshPath string
	root      string // the private tree
	uri       string // virsh -c
}

// startDaemons starts virtlogd and libvirtd on a private tree and returns
// once libvirtd accepts connections. Domains still running at the end of
// the test are destroyed before libvirtd stops (a QEMU outlives its
// libvirtd otherwise).
func startDaemons(t *testing.T) *daemons {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test runs the system libvirtd, which must be root (its QEMU then runs as libvirt-qemu): run go test as root")
	}
	bin := map[string]string{}
	for _, p := range []string{"libvirtd", "virtlogd", "virsh", "unshare"} {
		path, err := exec.LookPath(p)
		if err != nil {
			// The daemons are in /usr/sbin, which a PATH may lack.
			if _, serr := os.Stat("/usr/sbin/" + p); serr != nil {
				t.Fatalf("%s: %v; %s", p, err, installHint)
			}
			path = "/usr/sbin/" + p
		}
		bin[p] = path
	}
	root, err := os.MkdirTemp("", "nvblk-libvirt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if guest.Keep() {
			t.Logf("kept libvirt's private tree %s", root)
			return
		}
		os.RemoveAll(root)
	})
	// QEMU, as libvirt-qemu, reaches the kernel, initramfs and nvblk's
	// socket under root.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &daemons{virshPath: bin["virsh"], root: root, uri: "qemu:///system?socket=" + filepath.Join(root, "run", "libvirt-sock")}
	var mounts strings.Builder
	mounts.WriteString("set -e\n")
	for _, p := range privateDirs {
		if err := os.Mkdir(filepath.Join(root, p.sub), 0o755); err != nil {
			t.Fatal(err)
		}
		// The mount point must exist on the host; /run/libvirt does only
		// once a libvirtd ran. One made here goes at the end.
		if _, err := os.Stat(p.system); errors.Is(err, os.ErrNotExist) {
			if err := os.Mkdir(p.system, 0o755); err != nil {
				t.Fatalf("mount point for the private %s: %v", p.sub, err)
			}
			t.Cleanup(func() { os.Remove(p.system) })
		}
		fmt.Fprintf(&mounts, "mount --bind %s %s\n", shellQuote(filepath.Join(root, p.sub)), p.system)
	}
	mounts.WriteString("exec \"$@\"\n")
	for name, conf := range map[string]string{"libvirtd.conf": libvirtdConf, "virtlogd.conf": virtlogdConf, "qemu.conf": qemuConf} {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Each daemon gets a mount namespace of its own with the same bind
	// mounts, so both see one private tree at the system paths, and QEMU
	// inherits libvirtd's. unshare execs sh, which execs the daemon: its
	// pid is the daemon's, and it dies with the test binary.
	inTree := func(argv ...string) *exec.Cmd {
		return exec.Command(bin["unshare"], append([]string{"--mount", "--propagation", "private", "sh", "-c", mounts.String(), "sh"}, argv...)...)
	}
	guest.StartBackend(t, "virtlogd", filepath.Join(root, "run", "virtlogd-sock"), inTree(bin["virtlogd"]), "")
	guest.StartBackend(t, "libvirtd", filepath.Join(root, "run", "libvirt-sock"), inTree(bin["libvirtd"]), "")
	t.Cleanup(func() { d.destroyAll(t) })
	return d
}

// virsh runs virsh on the private daemon and returns its output; a
// non-zero exit is an error carrying stderr. It gives up after two
// minutes: `virsh start` waits for QEMU, which waits for its vhost-user
// back-end.
func (d *daemons) virsh(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.virshPath, append([]string{"-c", d.uri}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("virsh %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// mustVirsh is virsh failing the test on an error.
func (d *daemons) mustVirsh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.virsh(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// state is `virsh domstate`: "running", "shut off", ...
func (d *daemons) state(t *testing.T, name string) string {
	t.Helper()
	return strings.TrimSpace(d.mustVirsh(t, "domstate", name))
}

// waitState waits until the domain is in state want.
func (d *daemons) waitState(t *testing.T, name, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := d.state(t, name)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("domain %s is %q after %v, want %q", name, got, timeout, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// qemuLog is libvirt's log of the domain's QEMU: a "starting up" header
// and the full command line for each start, then QEMU's stderr.
func (d *daemons) qemuLog(name string) string {
	b, _ := os.ReadFile(filepath.Join(d.root, "log", "qemu", name+".log"))
	return string(b)
}

// qemuPid is the pid of the domain's running QEMU, from libvirt's pid file.
func (d *daemons) qemuPid(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join(d.root, "run", "qemu", name+".pid"))
	if err != nil {
		return 0, fmt.Errorf("QEMU pid of %s: %w", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("QEMU pid file of %s: %w", name, err)
	}
	return pid, nil
}

// destroyAll ends every domain still running, with virsh destroy and, if
// that fails, SIGKILL to the QEMU libvirt's pid file names.
func (d *daemons) destroyAll(t *testing.T) {
	out, err := d.virsh("list", "--name")
	if err != nil {
		t.Log(err)
	}
	for _, name := range strings.Fields(out) {
		if _, err := d.virsh("destroy", name); err != nil {
			t.Log(err)
		}
	}
	// run/qemu holds a NAME.pid per running domain, and driver.pid,
	// libvirtd's own: only a QEMU is killed.
	pids, _ := filepath.Glob(filepath.Join(d.root, "run", "qemu", "*.pid"))
	for _, p := range pids {
		name := strings.TrimSuffix(filepath.Base(p), ".pid")
		pid, err := d.qemuPid(name)
		if err != nil {
			continue
		}
		argv0, _, _ := strings.Cut(readProc(pid, "cmdline"), "\x00")
		if strings.HasPrefix(filepath.Base(argv0), "qemu-system") {
			t.Logf("killing QEMU of %s (pid %d), which virsh destroy left running", name, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// readProc is /proc/PID/NAME, or "" if it cannot be read.
func readProc(pid int, name string) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	return string(b)
}

// shellQuote is s as one sh word.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
