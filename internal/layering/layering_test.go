package layering

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/nvblk/nvblk"

// allowed lists, for each library package, the module's packages it may
// import directly; a package of the module missing here fails the test, so
// a new package has to take its place in the layout.
var allowed = map[string][]string{
	"virtio":                     {},
	"pmem":                       {},
	"btt":                        {"pmem"},
	"virtq":                      {"virtio"},
	"vhostuser":                  {},
	"nbd":                        {"internal/acceptretry"},
	"vhostuser/frontend":         {"vhostuser", "virtio"},
	"vhostuser/frontend/loadgen": {"vhostuser/frontend", "virtio"},
	"vhostuser/conformance":      {"vhostuser", "vhostuser/frontend", "virtio"},
	"vhost":                      {"vhostuser", "virtq", "virtio", "internal/acceptretry"},
	"vhost/blk":                  {"vhost", "virtq", "virtio"},
	"internal/control":           {"vhost", "internal/acceptretry"},
	"internal/acceptretry":       {},
	"internal/tmpfstest":         {},
	"internal/blkserve":          {"vhost", "vhost/blk", "btt", "pmem", "internal/diskmove", "nbd"},
	"internal/crashmedium":       {},
	"internal/diskmove":          {},
	"internal/fdcheck":           {},
	"internal/layering":          {},
	"internal/systemd":           {},
	"internal/vhosttest":         {"internal/blkserve", "vhost", "vhost/blk", "vhostuser", "btt", "pmem"},
	"qemu-tests/agentproto":      {},
}

// forbidden are the rules on the whole dependency graph: prefix -> what no
// package under it may reach, directly or through another package.
var forbidden = []struct {
	from, to, why string
}{
	{"vhostuser", "vhost", "the protocol and its driver tools must not need nvblk's server"},
	{"vhost", "vhost/blk", "the server is device-agnostic"},
	{"vhost", "vhostuser/frontend", "the server must not need the test driver"},
	{"vhost/blk", "btt", "the device sees a blk.Disk, never the BTT"},
	{"btt", "vhost", "the BTT imports no transport"},
	{"btt", "vhostuser", "the BTT imports no transport"},
	{"btt", "virtq", "the BTT imports no transport"},
	{"pmem", "btt", "the medium knows no format"},
	{"pmem", "vhost", "the medium imports no transport"},
	{"pmem", "vhostuser", "the medium imports no transport"},
}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
	Name       string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < len(allowed) {
		t.Fatalf("go list found %d packages, fewer than the %d in the layout", len(pkgs), len(allowed))
	}
	return pkgs
}

// local returns path relative to the module, and whether it is the module's.
func local(path string) (string, bool) {
	if path == module {
		return "", true
	}
	rel, ok := strings.CutPrefix(path, module+"/")
	return rel, ok
}

func under(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}

// violations checks one package against the rules and returns a line per
// offending import.
func violations(p pkg) []string {
	name, _ := local(p.ImportPath)
	var bad []string
	for _, imp := range p.Imports {
		rel, ok := local(imp)
		if !ok {
			continue
		}
		if under(rel, "cmd") {
			bad = append(bad, fmt.Sprintf("%s imports %s: no library imports cmd/", name, rel))
		}
		if allow, listed := allowed[name]; listed && !slices.Contains(allow, rel) {
			bad = append(bad, fmt.Sprintf("%s imports %s: not among its allowed imports %v", name, rel, allow))
		}
	}
	for _, r := range forbidden {
		if !under(name, r.from) || under(name, r.to) {
			continue
		}
		for _, dep := range p.Deps {
			if rel, ok := local(dep); ok && under(rel, r.to) {
				bad = append(bad, fmt.Sprintf("%s depends on %s: %s", name, rel, r.why))
			}
		}
	}
	return bad
}

// TestImportsPointDown reads the module's import graph (go list) and fails
// naming every import that breaks the layout.
func TestImportsPointDown(t *testing.T) {
	for _, p := range listPackages(t) {
		name, _ := local(p.ImportPath)
		if _, listed := allowed[name]; !listed && p.Name != "main" && !under(name, "qemu-tests") {
			t.Errorf("%s is not in the layout: give it a row in allowed", name)
		}
		for _, v := range violations(p) {
			t.Error(v)
		}
	}
}

// TestRulesCatchAWrongImport: the checker itself flags the imports the
// layout forbids, so a passing TestImportsPointDown means something.
func TestRulesCatchAWrongImport(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    pkg
		want string
	}{
		{"protocol reaching the server", pkg{ImportPath: module + "/vhostuser/frontend",
			Imports: []string{module + "/vhost"}, Deps: []string{module + "/vhost"}}, "vhostuser/frontend depends on vhost"},
		{"server importing a device", pkg{ImportPath: module + "/vhost",
			Imports: []string{module + "/vhost/blk"}, Deps: []string{module + "/vhost/blk"}}, "the server is device-agnostic"},
		{"btt importing a transport", pkg{ImportPath: module + "/btt",
			Deps: []string{module + "/virtq"}}, "the BTT imports no transport"},
		{"library importing cmd", pkg{ImportPath: module + "/internal/control",
			Imports: []string{module + "/cmd/nvblk"}}, "no library imports cmd/"},
		{"device reaching the BTT", pkg{ImportPath: module + "/vhost/blk",
			Deps: []string{module + "/pmem", module + "/btt"}}, "never the BTT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(violations(tc.p), "\n")
			if !strings.Contains(got, tc.want) {
				t.Errorf("violations %q, want one saying %q", got, tc.want)
			}
		})
	}
}
