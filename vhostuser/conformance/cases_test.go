package conformance_test

import (
	"regexp"
	"testing"

	"github.com/nvblk/nvblk/vhostuser/conformance"
)

// clauseForm is a clause of one of the two specs the suite holds back-ends
// to, by the section's name as the spec spells it: vhost-user "Ring states",
// virtio 1.2 §5.2.6 "Device Operation"; what follows (the message, field or
// status) is free.
var clauseForm = regexp.MustCompile(`^(vhost-user "[^"]+"|virtio 1\.2 §\d+(\.\d+)* "[^"]+")`)

func TestEveryCaseNamesTheSpecClauseItChecks(t *testing.T) {
	cases := conformance.Cases()
	if len(cases) < 30 {
		t.Fatalf("%d cases", len(cases))
	}
	seen := map[string]bool{}
	for _, c := range cases {
		switch {
		case c.Name == "":
			t.Errorf("a case with clause %q has no name", c.Clause)
		case seen[c.Name]:
			t.Errorf("%s: declared twice", c.Name)
		case c.Clause == "":
			t.Errorf("%s: no clause", c.Name)
		case !clauseForm.MatchString(c.Clause):
			t.Errorf("%s: clause %q names no section of the vhost-user or the virtio 1.2 spec", c.Name, c.Clause)
		}
		seen[c.Name] = true
	}
}

// TestARunReportsEveryDeclaredCaseWithItsClause: a destructive run on a
// writable disk reaches every case (skipped ones included), each reported
// once, by a declared name, with its clause.
func TestARunReportsEveryDeclaredCaseWithItsClause(t *testing.T) {
	sock, _ := startNvblk(t, serverOpts{queues: 2})
	rep := run(t, sock, conformance.Options{Destructive: true})
	declared := map[string]string{}
	for _, c := range conformance.Cases() {
		declared[c.Name] = c.Clause
	}
	for _, r := range rep.Results {
		clause, ok := declared[r.Name]
		switch {
		case !ok:
			t.Errorf("%s: reported, but not among Cases", r.Name)
		case r.Clause != clause:
			t.Errorf("%s: reported with clause %q, declared with %q", r.Name, r.Clause, clause)
		}
		delete(declared, r.Name)
	}
	for name := range declared {
		t.Errorf("%s: declared, but not reported once", name)
	}
}
