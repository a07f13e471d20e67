// Package guest boots a real Linux guest under QEMU for tests: the host's
// Debian kernel, an initramfs built here from the static agent
// (qemu-tests/agent) plus the kernel modules and programs the tests need,
// and a script of agent steps per machine. QEMU is driven through QMP.
package guest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// InstallHint ends every error about a missing kernel or QEMU.
const InstallHint = "run scripts/install-deps.sh to install QEMU, the Debian kernel, e2fsprogs and ndctl"

// guestModules are the modules the agent loads, by name; their
// dependencies from modules.dep come first. Built-in ones are skipped.
var guestModules = []string{
	// NVDIMM: the ACPI NFIT bus creates the regions; nd_pmem drives
	// namespaces and, through nd_btt, sector-mode (BTT) namespaces.
	"nfit", "nd_pmem", "nd_btt",
	// ext4 asks the crypto API for "crc32c" (modules.softdep: pre:
	// crypto-crc32c), which modules.dep does not list.
	"crc32c_generic", "ext4",
	// For vhost-user-blk guests.
	"virtio_pci", "virtio_blk",
}

// guestPrograms are host programs copied into the guest with the shared
// libraries and the dynamic loader they need.
var guestPrograms = map[string]string{
	"/sbin/mkfs.ext4": "mkfs.ext4",
	"/sbin/e2fsck":    "e2fsck",
}

// Kit is what every machine of a test run boots: one kernel, one base
// initramfs.
type Kit struct {
	Kernel    string // path of the bzImage
	Release   string // its uname -r
	Initramfs string // base newc archive; each machine appends its script
	Modules   []string
	Agent     string // the static agent binary, /init of every archive
}

// NewKit finds the kernel and QEMU and builds the base initramfs into dir.
func NewKit(dir string) (*Kit, error) {
	if _, err := qemuBinary(); err != nil {
		return nil, err
	}
	kernel, release, err := findKernel()
	if err != nil {
		return nil, err
	}
	agent := filepath.Join(dir, "agent")
	k := &Kit{Kernel: kernel, Release: release, Initramfs: filepath.Join(dir, "base.cpio"), Agent: agent}
	build := exec.Command("go", "build", "-trimpath", "-o", agent, "github.com/nvblk/nvblk/qemu-tests/agent")
	// GOFLAGS from the caller (say -race) would not fit a static binary.
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build guest agent: %w\n%s", err, out)
	}
	mods, err := moduleOrder(k.Release, guestModules)
	if err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	k.Modules = mods
	if err := k.writeInitramfs(k.Initramfs, mods, guestPrograms, nil); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	return k, nil
}

func qemuBinary() (string, error) {
	name := os.Getenv("NVBLK_QEMU")
	if name == "" {
		name = "qemu-system-x86_64"
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("QEMU (%s) not found: %w; %s", name, err, InstallHint)
	}
	return p, nil
}

// findKernel picks NVBLK_KERNEL or the newest readable /boot/vmlinuz-*
// whose modules are installed, and reads its release from the bzImage
// header so that the modules match the kernel that boots, not the host's.
func findKernel() (string, string, error) {
	candidates := []string{os.Getenv("NVBLK_KERNEL")}
	if candidates[0] == "" {
		found, _ := filepath.Glob("/boot/vmlinuz-*")
		sort.Sort(sort.Reverse(sort.StringSlice(found)))
		candidates = found
	}
	var reasons []string
	for _, k := range candidates {
		rel, err := kernelRelease(k)
		if err != nil {
			reasons = append(reasons, err.Error())
			continue
		}
		if _, err := os.Stat(filepath.Join("/lib/modules", rel, "modules.dep")); err != nil {
			reasons = append(reasons, fmt.Sprintf("%s: no modules for %s: %v", k, rel, err))
			continue
		}
		return k, rel, nil
	}
	return "", "", fmt.Errorf("no usable guest kernel in /boot (%s); %s", strings.Join(reasons, "; "), InstallHint)
}

// kernelRelease reads the version string a bzImage carries: the setup
// header holds, at 0x20e, its offset minus 0x200.
func kernelRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return "", fmt.Errorf("%s is not a bzImage", path)
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20e:])) + 0x200
	ver := make([]byte, 128)
	if _, err := f.ReadAt(ver, off); err != nil {
		return "", fmt.Errorf("%s version string: %w", path, err)
	}
	fields := strings.Fields(string(ver))
	if len(fields) == 0 {
		return "", fmt.Errorf("%s has an empty version string", path)
	}
	return fields[0], nil
}

// moduleOrder resolves names to .ko paths under /lib/modules/release in
// load order (dependencies first), skipping built-in modules.
func moduleOrder(release string, names []string) ([]string, error) {
	root := filepath.Join("/lib/modules", release)
	dep, err := os.ReadFile(filepath.Join(root, "modules.dep"))
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{} // module name -> relative paths of its deps
	paths := map[string]string{}  // module name -> relative path
	for _, line := range strings.Split(string(dep), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		name := moduleName(mod)
		paths[name] = mod
		deps[name] = strings.Fields(rest)
	}
	builtin, _ := os.ReadFile(filepath.Join(root, "modules.builtin"))
	var order []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		rel, ok := paths[name]
		if !ok {
			if bytes.Contains(builtin, []byte("/"+name+".ko")) {
				return nil
			}
			return fmt.Errorf("module %s is neither in modules.dep nor built in", name)
		}
		for _, d := range deps[name] {
			if err := visit(moduleName(d)); err != nil {
				return err
			}
		}
		if !strings.HasSuffix(rel, ".ko") {
			return fmt.Errorf("module %s is compressed (%s); the guest agent loads only plain .ko files", name, rel)
		}
		order = append(order, filepath.Join(root, rel))
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func moduleName(path string) string {
	base := filepath.Base(path)
	base = base[:strings.Index(base, ".ko")]
	return strings.ReplaceAll(base, "-", "_")
}

// sharedObjects lists the dynamic loader and the libraries, recursively,
// that the ELF program at path needs.
func sharedObjects(path string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var walk func(p string) error
	walk = func(p string) error {
		f, err := elf.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				b, err := io.ReadAll(prog.Open())
				if err != nil {
					return err
				}
				interp := strings.TrimRight(string(b), "\x00")
				if !seen[interp] {
					seen[interp] = true
					out = append(out, interp)
				}
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return err
		}
		for _, lib := range libs {
			found := ""
			for _, dir := range []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib"} {
				if _, err := os.Stat(filepath.Join(dir, lib)); err == nil {
					found = filepath.Join(dir, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s needs %s, which is not installed", p, lib)
			}
			if seen[found] {
				continue
			}
			seen[found] = true
			out = append(out, found)
			if err := walk(found); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk(path)
}

// Extras are what some tests' guests need on top of the base archive.
type Extras struct {
	// Modules are loaded after the base ones, with their dependencies.
	Modules []string
	// Programs maps a guest path to a host program, found on PATH or in
	// /usr/sbin and /sbin, copied with its shared libraries and loader.
	Programs map[string]string
	// Files maps a guest path to a host file copied as it is (mode 0755):
	// a static binary, a configuration file.
	Files map[string]string
}

// InitramfsWith writes to path a base archive holding everything the
// kit's own holds plus extras. Boot it with Config.Initramfs.
func (k *Kit) InitramfsWith(path string, x Extras) error {
	mods, err := moduleOrder(k.Release, append(append([]string(nil), guestModules...), x.Modules...))
	if err != nil {
		return err
	}
	programs := map[string]string{}
	for g, h := range guestPrograms {
		programs[g] = h
	}
	for g, h := range x.Programs {
		programs[g] = h
	}
	return k.writeInitramfs(path, mods, programs, x.Files)
}

// MinimalInitramfs writes to path a base archive holding only the agent
// and the named modules with their dependencies: no programs, nothing for
// NVDIMMs. Boot it with Config.Initramfs.
func (k *Kit) MinimalInitramfs(path string, modules ...string) error {
	mods, err := moduleOrder(k.Release, modules)
	if err != nil {
		return err
	}
	return k.writeInitramfs(path, mods, nil, nil)
}

func (k *Kit) writeInitramfs(path string, mods []string, programs, extraFiles map[string]string) error {
	files := map[string]string{"/init": k.Agent} // guest path -> host path
	for g, h := range extraFiles {
		files[g] = h
	}
	for _, m := range mods {
		files[m] = m
	}
	for guestPath, name := range programs {
		host, err := exec.LookPath(name)
		if err != nil {
			for _, dir := range []string{"/usr/sbin", "/sbin"} {
				if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
					host, err = filepath.Join(dir, name), nil
					break
				}
			}
		}
		if err != nil {
			return fmt.Errorf("%s not found: %w; %s", name, err, InstallHint)
		}
		files[guestPath] = host
		libs, err := sharedObjects(host)
		if err != nil {
			return err
		}
		for _, l := range libs {
			files[l] = l
		}
	}
	if _, err := os.Stat("/etc/mke2fs.conf"); err == nil {
		files["/etc/mke2fs.conf"] = "/etc/mke2fs.conf"
	}

	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	w := cpio.Newc.Writer(out)
	dirs := map[string]bool{}
	mkdirs := func(p string) error {
		var chain []string
		for d := filepath.Dir(p); d != "/" && !dirs[d]; d = filepath.Dir(d) {
			chain = append(chain, d)
			dirs[d] = true
		}
		for i := len(chain) - 1; i >= 0; i-- {
			if err := w.WriteRecord(cpio.Directory(strings.TrimPrefix(chain[i], "/"), 0o755)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range []string{"/dev/x", "/proc/x", "/sys/x", "/tmp/x", "/mnt/x"} {
		if err := mkdirs(d); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init's stdio before anything can
	// mount devtmpfs.
	if err := w.WriteRecord(cpio.CharDev("dev/console", 0o600, 5, 1)); err != nil {
		return err
	}
	// mke2fs looks for mounted file systems in /etc/mtab.
	if err := mkdirs("/etc/mtab"); err != nil {
		return err
	}
	if err := w.WriteRecord(cpio.Symlink("etc/mtab", "/proc/self/mounts")); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for g := range files {
		names = append(names, g)
	}
	sort.Strings(names)
	for _, g := range names {
		b, err := os.ReadFile(files[g])
		if err != nil {
			return err
		}
		if err := mkdirs(g); err != nil {
			return err
		}
		rec := cpio.StaticRecord(b, cpio.Info{Name: strings.TrimPrefix(g, "/"), Mode: cpio.S_IFREG | 0o755})
		if err := w.WriteRecord(rec); err != nil {
			return fmt.Errorf("%s: %w", g, err)
		}
	}
	list := strings.Join(mods, "\n") + "\n"
	if err := w.WriteRecord(cpio.StaticFile(strings.TrimPrefix(agentproto.ModuleListPath, "/"), list, 0o644)); err != nil {
		return err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return err
	}
	return out.Close()
}

// initramfsWithScript writes the base archive followed by a second archive
// holding the script: the kernel unpacks concatenated newc archives in
// order.
func (k *Kit) initramfsWithScript(path, basePath string, script []byte) error {
	if basePath == "" {
		basePath = k.Initramfs
	}
	base, err := os.ReadFile(basePath)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.Write(base)
	w := cpio.Newc.Writer(&buf)
	if err := w.WriteRecord(cpio.StaticFile(strings.TrimPrefix(agentproto.ScriptPath, "/"), string(script), 0o644)); err != nil {
		return err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return errors.Join(fmt.Errorf("write initramfs %s", path), err)
	}
	return nil
}
