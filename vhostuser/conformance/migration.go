package conformance

import (
	"fmt"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

const migrationClause = `vhost-user "Migration"`

// migrationCases share a dirty log as QEMU does while it migrates a guest
// and check what the back-end marks in it.
var migrationCases = []Case{
	{"migration/dirty-log", migrationClause + ": VHOST_F_LOG_ALL, VHOST_USER_SET_LOG_BASE, VHOST_VRING_F_LOG"},
	{"migration/dirty-log-off", migrationClause + ": VHOST_USER_SET_FEATURES without VHOST_F_LOG_ALL"},
}

func checkMigration(s *suite) {
	if !s.has(vhostuser.FeatureLogAll) || !s.protoHas(vhostuser.ProtoLogSHMFD) {
		for _, c := range migrationCases {
			s.record(c.Name, s.notOffered("VHOST_F_LOG_ALL with PROTOCOL_F_LOG_SHMFD"))
		}
		return
	}
	s.group(frontend.Options{DirtyLog: true}, caseNames(migrationCases), func(d *dev) {
		l, err := d.StartLogging()
		if err != nil {
			s.record("migration/dirty-log", errFinding("starting to log (SET_LOG_BASE, SET_FEATURES, SET_VRING_ADDR)", err))
			s.record("migration/dirty-log-off", skipf("logging did not start"))
			return
		}
		// Restarting the rings to log may write their used rings.
		l.Clear()
		s.record("migration/dirty-log", s.loggedRead(d, l, true))
		if err := d.StopLogging(); err != nil {
			s.record("migration/dirty-log-off", errFinding("stopping the log (SET_FEATURES, SET_VRING_ADDR)", err))
			return
		}
		l.Clear()
		s.record("migration/dirty-log-off", s.loggedRead(d, l, false))
	})
}

// loggedRead reads 16 KiB at sector 0 and checks l: with want, that the
// data pages, the status byte's page and the used ring's pages are marked
// ("All the modifications to memory pointed by vring "descriptor" should be
// marked. Modifications to "used" vring should be marked if
// VHOST_VRING_F_LOG is part of ring's flags"); without, that none is.
func (s *suite) loggedRead(d *dev, l *frontend.DirtyLog, want bool) finding {
	const n = 16 << 10
	q := d.Queues[0]
	r := &frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, n)}
	if err := q.Do(r, s.timeout()); err != nil {
		return errFinding("read", err)
	}
	if !want {
		if p := l.DirtyPages(); len(p) != 0 {
			return failf("%d pages marked after VHOST_F_LOG_ALL was cleared (first: guest %#x)", len(p), p[0]*vhostuser.LogPageSize)
		}
		return passf("a %d-byte read marked nothing", n)
	}
	check := []struct {
		what     string
		gpa, len uint64
	}{
		{"IN data", r.DataAddr, n},
		{"status byte", r.StatusAddr, 1},
		{"used ring", q.Ring.UsedAddr, 6 + 8*uint64(q.Ring.Size)},
	}
	for _, c := range check {
		for a := c.gpa &^ (vhostuser.LogPageSize - 1); a < c.gpa+c.len; a += vhostuser.LogPageSize {
			if !l.Dirty(a) {
				return failf("%s: the page at guest %#x is not marked", c.what, a)
			}
		}
	}
	return passf("%s", fmt.Sprintf("data, status and used ring pages marked (%d pages)", len(l.DirtyPages())))
}
