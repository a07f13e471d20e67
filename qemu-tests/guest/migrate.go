package guest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Live migration. A destination is a machine of its own: its own
// directory, QMP socket and serial files, so that what the guest prints
// after the switch-over (the agent's reports, kernel messages) is in the
// destination's console.log and agent.log, and the source's files end
// where it stopped. A report line the guest was sending at the moment of
// the switch-over is split between the two files and parsed in neither.

// StartIncoming starts a QEMU that waits for a migration stream instead
// of booting: the command line Start(cfg) runs plus `-incoming defer`,
// then QMP migrate-incoming on a unix socket in the machine's directory.
// It returns once QEMU listens there. cfg must describe the same machine
// as the source's (memory, CPUs, devices in the same order, Steps, so
// that the initramfs and kernel command line match); only what names a
// host resource, such as a vhost-user socket path, may differ.
func StartIncoming(t testing.TB, kit *Kit, cfg Config) *Machine {
	t.Helper()
	m := start(t, kit, cfg, true)
	m.incoming = "unix:" + filepath.Join(m.dir, "migrate.sock")
	if _, err := m.QMP("migrate-incoming", map[string]any{"uri": m.incoming}); err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU listening for the migration stream on %s", m.incoming)
	return m
}

// MigrationStats is QMP query-migrate's account of a migration.
type MigrationStats struct {
	Status string `json:"status"`
	// TotalTime is from migrate until completion; Downtime is how long
	// the guest was stopped for the switch-over (QEMU's estimate while
	// it runs, the measured time once completed); SetupTime is before
	// the first RAM was sent.
	TotalTimeMS int64  `json:"total-time"`
	DowntimeMS  int64  `json:"downtime"`
	SetupTimeMS int64  `json:"setup-time"`
	ErrorDesc   string `json:"error-desc"`
	RAM         struct {
		Transferred    int64   `json:"transferred"`
		Total          int64   `json:"total"`
		Duplicate      int64   `json:"duplicate"` // zero pages, sent as a marker
		Normal         int64   `json:"normal"`    // pages sent whole
		DirtySyncCount int64   `json:"dirty-sync-count"`
		Mbps           float64 `json:"mbps"`
	} `json:"ram"`
	// BlockedReasons is why QEMU would refuse a migration (a device's
	// migration blocker), from QEMU 6.0.
	BlockedReasons []string `json:"blocked-reasons"`
}

func (s MigrationStats) String() string {
	return fmt.Sprintf("%s in %d ms (setup %d ms), downtime %d ms, %.1f MiB sent (%d pages whole, %d zero) in %d dirty syncs",
		s.Status, s.TotalTimeMS, s.SetupTimeMS, s.DowntimeMS, float64(s.RAM.Transferred)/(1<<20),
		s.RAM.Normal, s.RAM.Duplicate, s.RAM.DirtySyncCount)
}

// MigrationInfo is the machine's query-migrate.
func (m *Machine) MigrationInfo() (MigrationStats, error) {
	var st MigrationStats
	raw, err := m.QMP("query-migrate", nil)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("query-migrate reply %s: %w", raw, err)
	}
	return st, nil
}

// Migrate live-migrates m's guest to dest (from StartIncoming): QMP
// migrate, query-migrate until it completes, then dest's query-status
// until the guest runs there. m is then paused ("postmigrate"); Quit it.
// An error says how it failed, with QEMU's words.
func (m *Machine) Migrate(dest *Machine, timeout time.Duration) (MigrationStats, error) {
	return m.migrate(dest, "running", timeout)
}

// MigratePaused is Migrate to a destination started with -S in its
// Config.Args: the guest arrives there paused ("paused" in query-status)
// and runs only after Cont, so what the destination's devices hold at the
// switch-over can be looked at first.
func (m *Machine) MigratePaused(dest *Machine, timeout time.Duration) (MigrationStats, error) {
	return m.migrate(dest, "paused", timeout)
}

// Cont resumes a paused guest (QMP cont) and waits until it runs.
func (m *Machine) Cont() error {
	if _, err := m.QMP("cont", nil); err != nil {
		return err
	}
	return m.waitStatus("running", 30*time.Second)
}

func (m *Machine) migrate(dest *Machine, destStatus string, timeout time.Duration) (MigrationStats, error) {
	if dest.incoming == "" {
		return MigrationStats{}, fmt.Errorf("destination was not started with StartIncoming")
	}
	// Both QEMUs are on this host: QEMU's default 128 MiB/s throttle
	// would only stretch the test.
	if _, err := m.QMP("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 30}); err != nil {
		return MigrationStats{}, err
	}
	if _, err := m.QMP("migrate", map[string]any{"uri": dest.incoming}); err != nil {
		return MigrationStats{}, fmt.Errorf("migrate to %s: %w", dest.incoming, err)
	}
	deadline := time.Now().Add(timeout)
	var st MigrationStats
	for {
		var err error
		if st, err = m.MigrationInfo(); err != nil {
			return st, err
		}
		switch st.Status {
		case "completed":
			if err := dest.waitStatus(destStatus, time.Until(deadline)); err != nil {
				return st, fmt.Errorf("migration completed, but on the destination: %w", err)
			}
			return st, nil
		case "failed", "cancelled":
			return st, fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("migration not completed after %v: %+v", timeout, st)
		}
		select {
		case <-m.exited:
			return st, fmt.Errorf("source QEMU exited while migrating: %v\n%s", m.waitErr, m.stderr.String())
		case <-dest.exited:
			return st, fmt.Errorf("destination QEMU exited while migrating: %v\n%s", dest.waitErr, dest.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitStatus polls query-status until it says want.
func (m *Machine) waitStatus(want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := m.Status()
		if err != nil {
			return err
		}
		if got == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("status %q after %v, want %q", got, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Quit ends QEMU with QMP quit (a source left paused by a migration,
// say) and waits for it to exit.
func (m *Machine) Quit() error {
	// QEMU may close the socket before or after it replies: the exit is
	// what counts.
	_, qerr := m.QMP("quit", nil)
	select {
	case <-m.exited:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("QEMU still running 30 s after QMP quit (%v)", qerr)
	}
	m.readAgent()
	if m.mon != nil {
		_ = m.mon.Disconnect()
		m.mon = nil
	}
	if m.waitErr != nil {
		return fmt.Errorf("QEMU after QMP quit: %w\n%s", m.waitErr, m.stderr.String())
	}
	return nil
}

// PowerButton presses the ACPI power button (QMP system_powerdown). The
// agent does not power off on it; with the button driver loaded the
// guest counts it in /sys/firmware/acpi/interrupts/ff_pwr_btn, a signal
// a step can wait for (stream-write's Path).
func (m *Machine) PowerButton() error {
	_, err := m.QMP("system_powerdown", nil)
	return err
}

// ramFile is the path, under /proc, of the memfd that holds m's RAM
// (Config.SharedMemory), which QEMU keeps open as long as it runs and
// names after the object type, memory-backend-memfd.
func (m *Machine) ramFile() (string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", m.Pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(link, "/memfd:memory-backend-memfd") {
			return filepath.Join(dir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("QEMU %d has no memory-backend-memfd open (not a SharedMemory machine?)", m.Pid())
}

// RAMPage is 4 KiB of guest RAM, by guest-physical address: below 4 GiB
// a q35 machine's RAM file is its guest-physical memory from 0.
const RAMPage = 4096

// PageDiff is one RAM page in which two machines differ.
type PageDiff struct {
	GPA   uint64
	Bytes int    // how many of its bytes differ
	A     []byte // the page as the first machine holds it
}

// DiffRAM lists the RAM pages in which two machines differ (at most limit
// of them, and their count). Both must be stopped: a source paused by a
// completed migration and its destination started with -S hold, page for
// page, the same RAM when the migration stream carried every write of the
// guest and of its back-ends.
func DiffRAM(a, b *Machine, limit int) (diffs []PageDiff, count int, err error) {
	var f [2]*os.File
	for i, m := range []*Machine{a, b} {
		path, err := m.ramFile()
		if err != nil {
			return nil, 0, err
		}
		if f[i], err = os.Open(path); err != nil {
			return nil, 0, err
		}
		defer f[i].Close()
	}
	const chunk = 1 << 20
	bufA, bufB := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); ; off += chunk {
		na, errA := io.ReadFull(io.NewSectionReader(f[0], off, chunk), bufA)
		nb, errB := io.ReadFull(io.NewSectionReader(f[1], off, chunk), bufB)
		if na != nb {
			return diffs, count, fmt.Errorf("RAM sizes differ at %#x", off+int64(min(na, nb)))
		}
		for p := 0; p < na; p += RAMPage {
			pa, pb := bufA[p:min(p+RAMPage, na)], bufB[p:min(p+RAMPage, na)]
			if bytes.Equal(pa, pb) {
				continue
			}
			if count++; len(diffs) < limit {
				d := PageDiff{GPA: uint64(off) + uint64(p), A: bytes.Clone(pa)}
				for i := range pa {
					if pa[i] != pb[i] {
						d.Bytes++
					}
				}
				diffs = append(diffs, d)
			}
		}
		if errA != nil || errB != nil {
			if (errA == io.EOF || errA == io.ErrUnexpectedEOF) && (errB == io.EOF || errB == io.ErrUnexpectedEOF) {
				return diffs, count, nil
			}
			return diffs, count, errors.Join(errA, errB)
		}
	}
}
