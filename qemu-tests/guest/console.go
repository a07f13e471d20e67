package guest

import (
	"regexp"
	"strings"
)

// kernelTrouble matches console lines in which the guest kernel reports a
// failed I/O, a broken virtqueue, a stuck task or a crash. A guest that
// printed one did not get the disk it was promised, whatever its script
// reported.
var kernelTrouble = regexp.MustCompile(`I/O error|blk_update_request|print_req_error|` +
	`(?i:virtio_blk.*error)|virtio.*(broken|failed)|vhost.*(error|fail)|` +
	`hung_task|blocked for more than|Buffer I/O error|` +
	`EXT4-fs (error|warning)|JBD2.*(error|abort)|critical (medium|target) error|` +
	`read-only block-device|` +
	`BUG:|Oops|Call Trace|WARNING:|Kernel panic|general protection fault`)

// KernelTrouble returns the console lines that report kernel trouble,
// except those matching one of allow: a test that provokes a failure on
// purpose names exactly the line it expects.
func KernelTrouble(console string, allow ...*regexp.Regexp) []string {
	var out []string
lines:
	for _, line := range strings.Split(console, "\n") {
		if strings.Contains(line, "NVBLK-AGENT") || !kernelTrouble.MatchString(line) {
			// The agent's own reports quote errors it expected.
			continue
		}
		for _, a := range allow {
			if a.MatchString(line) {
				continue lines
			}
		}
		out = append(out, strings.TrimRight(line, "\r"))
	}
	return out
}
