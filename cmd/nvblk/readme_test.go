package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

var flagToken = regexp.MustCompile(`(^|[\s\[|(])--([a-z][a-z0-9-]*)`)

// readmeFlags reads the nvblk command lines of README.md's code blocks (a
// line starting "nvblk NAME", continued by indented lines) and returns the
// flags shown for each command; flags with no command mean serve.
func readmeFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]map[string]bool{}
	inCode, cur := false, ""
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "```") {
			inCode, cur = !inCode, ""
			continue
		}
		if !inCode {
			continue
		}
		rest, isCmd := strings.CutPrefix(line, "nvblk ")
		switch {
		case isCmd:
			fields := strings.Fields(rest)
			cur = ""
			if len(fields) > 0 {
				cur = fields[0]
			}
			if strings.HasPrefix(cur, "--") {
				cur = "serve" // the backend program conventions
			} else if commands[cur] == nil {
				t.Errorf("README shows %q: no such command", "nvblk "+cur)
				cur = ""
				continue
			}
			if shown[cur] == nil {
				shown[cur] = map[string]bool{}
			}
		case cur != "" && strings.HasPrefix(line, " "):
		default:
			cur = ""
			continue
		}
		for _, m := range flagToken.FindAllStringSubmatch(line, -1) {
			shown[cur][m[2]] = true
		}
	}
	return shown
}

// TestREADMEAndHelpAgreeOnEveryCommandAndFlag: every command in the
// command table is shown in the README with every flag it has and none it
// lacks, and its usage line in `nvblk help` names each of its flags.
func TestREADMEAndHelpAgreeOnEveryCommandAndFlag(t *testing.T) {
	shown := readmeFlags(t)
	for name, c := range commands {
		fs := newFlagSet(name)
		if f, ok := flagSets[name]; ok {
			fs = f()
		}
		has := map[string]bool{}
		fs.VisitAll(func(f *flag.Flag) { has[f.Name] = true })
		if shown[name] == nil {
			t.Errorf("README shows no `nvblk %s` command line", name)
			continue
		}
		var missing, unknown, unusaged []string
		for f := range has {
			if !shown[name][f] {
				missing = append(missing, f)
			}
			if !strings.Contains(c.usage, "--"+f) {
				unusaged = append(unusaged, f)
			}
		}
		for f := range shown[name] {
			if !has[f] {
				unknown = append(unknown, f)
			}
		}
		sort.Strings(missing)
		sort.Strings(unknown)
		sort.Strings(unusaged)
		if len(missing) > 0 {
			t.Errorf("README's nvblk %s lacks --%s", name, strings.Join(missing, ", --"))
		}
		if len(unknown) > 0 {
			t.Errorf("README shows nvblk %s --%s, which it does not accept", name, strings.Join(unknown, ", --"))
		}
		if len(unusaged) > 0 {
			t.Errorf("nvblk help %s: usage line lacks --%s", name, strings.Join(unusaged, ", --"))
		}
	}
}
