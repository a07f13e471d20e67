package guest_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
	"github.com/nvblk/nvblk/qemu-tests/guest"
)

func TestGuestBootsToTheAgentWhileQMPSaysRunning(t *testing.T) {
	m := guest.Start(t, suite.Kit, guest.Config{
		Append: "nvblk.marker=hello",
		Steps:  []agentproto.Step{{Op: agentproto.OpRead, Path: "/proc/cmdline"}},
	})
	status, err := m.Status()
	if err != nil {
		t.Fatal(err)
	}
	if status != "running" {
		t.Fatalf("QMP query-status = %q, want running", status)
	}
	if _, err := m.WaitReport(agentproto.OpBoot, guest.DefaultTimeout); err != nil {
		t.Fatal(err)
	}
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}
	var cmdline agentproto.ReadData
	if err := res.Decode(0, &cmdline); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cmdline.Text, "nvblk.marker=hello") {
		t.Fatalf("guest /proc/cmdline = %q, want the marker the harness appended", cmdline.Text)
	}
	t.Logf("boot to agent: %v host wall, %.1f s guest uptime; whole run %v",
		res.BootToAgent.Round(time.Millisecond), res.GuestUptime, res.Wall.Round(time.Millisecond))
}

// A step that fails must fail the run, and the steps after it must not
// run: later steps build on earlier ones.
func TestAgentStopsAtTheFirstFailingStep(t *testing.T) {
	m := guest.Start(t, suite.Kit, guest.Config{Steps: []agentproto.Step{
		{Op: agentproto.OpRead, Path: "/proc/version"},
		{Op: agentproto.OpRead, Path: "/no/such/file"},
		{Op: agentproto.OpRead, Path: "/proc/version"},
	}})
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.Finished() == nil {
		t.Fatal("run with a failing step counted as finished")
	}
	if rep, ok := res.Step(0); !ok || !rep.OK {
		t.Errorf("step 0 = %+v, want ok", rep)
	}
	if rep, ok := res.Step(1); !ok || rep.OK || !strings.Contains(rep.Error, "no such file") {
		t.Errorf("step 1 = %+v, want a no-such-file failure", rep)
	}
	if rep, ok := res.Step(2); ok {
		t.Errorf("step 2 ran after a failure: %+v", rep)
	}
}

// vhost-user back ends map guest RAM, so it must be a shared memfd of the
// same size as -m, and the guest must boot on it.
func TestGuestBootsOnSharedMemfdMemory(t *testing.T) {
	m := guest.Start(t, suite.Kit, guest.Config{
		MemoryMiB:    256,
		SharedMemory: true,
		Steps:        []agentproto.Step{{Op: agentproto.OpRead, Path: "/proc/meminfo"}},
	})
	raw, err := m.QMP("query-memdev", nil)
	if err != nil {
		t.Fatal(err)
	}
	var memdevs []struct {
		ID     string `json:"id"`
		Size   int64  `json:"size"`
		Share  bool   `json:"share"`
		Policy string `json:"policy"`
	}
	if err := json.Unmarshal(raw, &memdevs); err != nil {
		t.Fatalf("query-memdev %s: %v", raw, err)
	}
	if len(memdevs) != 1 || memdevs[0].Size != 256<<20 || !memdevs[0].Share {
		t.Fatalf("query-memdev = %s, want one shared 256 MiB backend", raw)
	}
	res, err := m.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Finished(); err != nil {
		t.Fatal(err)
	}
	var meminfo agentproto.ReadData
	if err := res.Decode(0, &meminfo); err != nil {
		t.Fatal(err)
	}
	var totalKiB int
	for _, line := range strings.Split(meminfo.Text, "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			totalKiB, _ = strconv.Atoi(strings.Fields(line)[1])
		}
	}
	if totalKiB < 200<<10 || totalKiB > 256<<10 {
		t.Fatalf("guest MemTotal = %d KiB, want close to 256 MiB", totalKiB)
	}
}
