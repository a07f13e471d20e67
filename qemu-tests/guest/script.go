package guest

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// For a QEMU the harness does not start itself (libvirt's, say): the
// initramfs to boot, and the agent's reports from wherever its serial port
// was written.

// WriteInitramfs writes to path the kit's base initramfs with steps as the
// agent's script, the archive Start boots, for a machine that names it
// itself (libvirt's <initrd>).
func (k *Kit) WriteInitramfs(path string, steps []agentproto.Step) error {
	script, err := json.Marshal(steps)
	if err != nil {
		return fmt.Errorf("encode agent script: %w", err)
	}
	return k.initramfsWithScript(path, "", script)
}

// ReadReports parses the agent's report lines in a file its report port
// (ttyS1) was written to. A line cut short at the end of the file, one
// the agent is still writing, is left for the next read; a whole line that
// does not parse is reported as op "garbled", as Machine does.
func ReadReports(path string) ([]agentproto.Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []agentproto.Report
	lines := strings.Split(string(b), "\n")
	for _, line := range lines[:len(lines)-1] {
		_, js, ok := strings.Cut(strings.TrimSpace(line), agentproto.ReportPrefix)
		if !ok {
			continue
		}
		var r agentproto.Report
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			r = agentproto.Report{Step: -1, Op: "garbled", Error: fmt.Sprintf("%v: %q", err, line)}
		}
		out = append(out, r)
	}
	return out, nil
}
