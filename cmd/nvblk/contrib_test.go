package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// repoRoot is two levels up from cmd/nvblk.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// vhostUserBackend is QEMU's docs/interop/vhost-user.json VhostUserBackend:
// description, type and binary required, tags optional, nothing else.
type vhostUserBackend struct {
	Description *string  `json:"description"`
	Type        *string  `json:"type"`
	Binary      *string  `json:"binary"`
	Tags        []string `json:"tags"`
}

// vhostUserBackendTypes is the VHostUserBackendType enum.
var vhostUserBackendTypes = []string{"9p", "balloon", "block", "caif", "console", "crypto", "gpu", "input", "net",
	"rng", "rpmsg", "rproc-serial", "scsi", "vsock", "fs"}

// vhostUserBlockFeatures is VHostUserBackendBlockFeature, each naming the
// command line option it promises.
var vhostUserBlockFeatures = map[string][]string{"read-only": {"--read-only"}, "blk-file": {"--blk-file", "disk.img"}}

func checkBackendDescription(t *testing.T, path, wantBinary string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var b vhostUserBackend
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("%s is not a VhostUserBackend: %v", path, err)
	}
	if dec.More() {
		t.Fatalf("%s holds more than one root element", path)
	}
	switch {
	case b.Description == nil || strings.TrimSpace(*b.Description) == "":
		t.Errorf("%s: no description", path)
	case b.Type == nil || !slices.Contains(vhostUserBackendTypes, *b.Type) || *b.Type != "block":
		t.Errorf("%s: type %v, want \"block\"", path, b.Type)
	case b.Binary == nil || !filepath.IsAbs(*b.Binary):
		t.Errorf("%s: binary %v is not an absolute path", path, b.Binary)
	case wantBinary != "" && *b.Binary != wantBinary:
		t.Errorf("%s: binary %s, want the installed %s", path, *b.Binary, wantBinary)
	}
}

// TestBackendDescriptionFollowsTheVhostUserSchema: the JSON file QEMU's
// backend program conventions ask for is a valid VhostUserBackend of type
// block; the default PREFIX puts the binary in /usr/local/bin.
func TestBackendDescriptionFollowsTheVhostUserSchema(t *testing.T) {
	checkBackendDescription(t, filepath.Join(repoRoot(t), "contrib/vhost-user/50-nvblk.json"), "/usr/local/bin/nvblk")
}

// TestAdvertisedCapabilitiesAreAcceptedOptions: every feature
// --print-capabilities advertises is a block feature of the schema, and
// serve's flag parser accepts the option it stands for.
func TestAdvertisedCapabilitiesAreAcceptedOptions(t *testing.T) {
	code, out, _ := nvblk(t, nil, "--print-capabilities")
	var caps struct {
		Type     string   `json:"type"`
		Features []string `json:"features"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &caps) != nil || caps.Type != "block" {
		t.Fatalf("--print-capabilities: exit %d: %s", code, out)
	}
	for _, f := range caps.Features {
		args, ok := vhostUserBlockFeatures[f]
		if !ok {
			t.Errorf("feature %q is not a VHostUserBackendBlockFeature", f)
			continue
		}
		fs, _ := serveFlags()
		if err := fs.Parse(args); err != nil || len(fs.Args()) != 0 {
			t.Errorf("feature %q: serve does not accept %q: %v", f, args, err)
		}
	}
	// The conventions' own options parse too.
	fs, a := serveFlags()
	if err := fs.Parse([]string{"--socket-path", "s.sock", "--fd", "3", "--print-capabilities"}); err != nil || !a.printCaps || a.fd != 3 {
		t.Errorf("--socket-path/--fd/--print-capabilities: %v", err)
	}
}

// unitKeys reads a systemd unit file's section.key=value pairs.
func unitKeys(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is not key=value", path, line)
			}
			keys[section+"."+k] = v
		}
	}
	return keys
}

// TestMakeInstallPutsTheBinaryWhereItsDescriptionSays: make install with
// DESTDIR and PREFIX installs the binary, the description naming it, and
// systemd units that systemd-analyze accepts, whose service starts that
// binary on the socket its socket unit listens on.
func TestMakeInstallPutsTheBinaryWhereItsDescriptionSays(t *testing.T) {
	root := repoRoot(t)
	tmp := t.TempDir()
	dest, prefix := filepath.Join(tmp, "dest"), filepath.Join(tmp, "prefix")
	mk := exec.Command("make", "-C", root, "install", "DESTDIR="+dest, "PREFIX="+prefix, "BIN="+filepath.Join(tmp, "build", "nvblk"))
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	bin := filepath.Join(prefix, "bin", "nvblk")
	installed := filepath.Join(dest, bin)
	checkBackendDescription(t, filepath.Join(dest, prefix, "share/qemu/vhost-user/50-nvblk.json"), bin)
	out, err := exec.Command(installed, "--print-capabilities").Output()
	if err != nil || !strings.Contains(string(out), `"block"`) {
		t.Fatalf("installed binary --print-capabilities: %v: %s", err, out)
	}

	units := filepath.Join(dest, prefix, "lib/systemd/system")
	svc, sock := unitKeys(t, filepath.Join(units, "nvblk@.service")), unitKeys(t, filepath.Join(units, "nvblk@.socket"))
	exe := strings.Fields(svc["Service.ExecStart"])
	if len(exe) < 2 || exe[0] != bin || exe[1] != "serve" || slices.Contains(exe, "--socket-path") || slices.Contains(exe, "--fd") {
		t.Errorf("ExecStart=%s: want %s serve, the socket left to activation", svc["Service.ExecStart"], bin)
	}
	if svc["Unit.Requires"] != "nvblk@%i.socket" || sock["Socket.ListenStream"] == "" || sock["Socket.Accept"] != "no" ||
		sock["Install.WantedBy"] != "sockets.target" || svc["Service.KillSignal"] != "SIGTERM" {
		t.Errorf("units: service %v, socket %v", svc, sock)
	}
	// The flags the service passes are serve's. On the activated socket
	// serve has no default control socket, so the service names the one
	// `nvblk status --socket-path LISTENSTREAM` asks.
	fs, a := serveFlags()
	if err := fs.Parse(slices.DeleteFunc(exe[2:], func(s string) bool { return strings.HasPrefix(s, "$") })); err != nil {
		t.Errorf("ExecStart flags: %v", err)
	}
	if want := defaultControlSocket(sock["Socket.ListenStream"]); a.control != want {
		t.Errorf("ExecStart --control-socket %q, want %q: the control socket of the socket unit's ListenStream", a.control, want)
	}

	// systemd-analyze checks the keys, the instance names and that the
	// ExecStart binary is executable (the one under DESTDIR, so the
	// description's PREFIX path is made to exist for it).
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze is needed to verify the units (apt-get install systemd): %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(installed, bin); err != nil {
		t.Fatal(err)
	}
	v := exec.Command(analyze, "verify", "--man=no", "./nvblk@vm1.service", "./nvblk@vm1.socket")
	v.Dir = units
	var stderr bytes.Buffer
	v.Stderr = &stderr
	if err := v.Run(); err != nil || stderr.Len() != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, stderr.String())
	}
}
