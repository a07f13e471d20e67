// Package libvirt boots the example domain nvblk ships,
// contrib/libvirt/nvblk-guest.xml, under a real libvirtd on `nvblk serve`,
// the way README.md's libvirt section tells an operator to:
//
//   - libvirtd and virtlogd are Debian's, started by the test (CI has no
//     systemd) as root, so that libvirt runs QEMU as libvirt-qemu, its
//     default user and group, exactly as on an operator's host. Their
//     configuration, runtime, state, log and cache directories are a
//     private tree bind-mounted over /etc/libvirt, /run/libvirt,
//     /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt in a mount
//     namespace of their own (a root libvirtd cannot be told to use other
//     paths): the host's libvirt, running or not, is neither read nor
//     changed. The private qemu.conf keeps every default but one:
//     cgroup_controllers is empty, since without systemd libvirtd would
//     otherwise create machine/ in each host cgroup hierarchy. virsh talks
//     to the daemon on the private socket (qemu:///system?socket=...).
//   - `nvblk serve --socket-mode 0660 --socket-group libvirt-qemu`, as the
//     README says, runs as root outside that namespace; the test checks
//     that QEMU runs as libvirt-qemu (so the group is what lets it in).
//   - The domain is the shipped file with the values its comment lists as
//     the operator's replaced where they stand (the kernel and initramfs,
//     the socket path) and three changes a test needs, each a whole-line
//     replacement that fails the test if the file no longer has the line:
//     the kernel command line adds panic=-1, on_reboot is destroy (so a
//     panicking guest ends), and the example's pty console becomes two
//     <serial type='file'> ports, the console (ttyS0) and the agent's
//     report port (ttyS1), which the test reads as the other harness
//     tests read QEMU's -serial file: (libvirt opens them and hands QEMU
//     the fds). The kernel is the harness's (the newest /boot/vmlinuz-*,
//     copied so that libvirt's DAC relabelling never touches the host's
//     file) and the initramfs its agent archive with the test's script.
//
// What the test checks, in one domain's life: virsh define accepts the
// domain; the QEMU libvirt starts has shared memfd RAM, a vhost-user-blk
// device with two queues on the socket and a reconnecting chardev (from
// libvirt's log of the QEMU command line, which the test logs); the
// guest sees the image's capacity and two queues, writes and reads back
// sectors, then writes a 4096-sector stream with four writers while nvblk
// is killed with SIGKILL twice and started again, and QEMU (the same
// process) reconnects each time; the guest sees no I/O error and reads the
// whole stream back. `virsh destroy` pulls the plug, the same nvblk serves
// the next QEMU, `virsh start` boots the same definition (with a new
// script in the initramfs file), which reads everything back and writes
// more; the guest powers off, the domain is shut off, nvblk stops cleanly,
// `nvblk check` passes and `nvblk read` finds every sector the guests
// wrote.
package libvirt

import (
	"os"
	"testing"

	"github.com/nvblk/nvblk/qemu-tests/guest"
)

var suite guest.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, "nvblk-libvirt-")) }
