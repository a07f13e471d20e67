package guest

import (
	"regexp"
	"slices"
	"testing"
)

// Lines from real 6.1 consoles: each kind of trouble is caught, the
// ordinary boot chatter of a virtio disk is not, and a test can excuse
// exactly the line it provokes.
func TestKernelTroubleFindsIOErrorsAndHungTasksButNotBootChatter(t *testing.T) {
	console := `[    3.544500] virtio_blk virtio0: 1/0/0 default/read/poll queues
[    3.551010] virtio_blk virtio0: [vda] 16104 4096-byte logical blocks (66.0 MB/62.9 MiB)
[    4.100000] EXT4-fs (vda): mounted filesystem with ordered data mode. Quota mode: none.
[    5.000000] I/O error, dev vda, sector 8 op 0x1:(WRITE) flags 0x8800 phys_seg 1 prio class 2
[    5.100000] Buffer I/O error on dev vda, logical block 1, lost async page write
[    6.000000] INFO: task kworker/0:1:12 blocked for more than 120 seconds.
[    6.000001] virtio_blk virtio0: virtio_blk error: bad request
[    7.000000] EXT4-fs error (device vda): ext4_find_entry:1683: inode #2: comm agent: reading directory lblock 0
[    8.000000] Trying to write to read-only block-device vda
NVBLK-AGENT {"step":3,"op":"write-sectors","ok":true,"data":{"error":"write /dev/vda: input/output error"}}
`
	got := KernelTrouble(console)
	want := []string{
		"[    5.000000] I/O error, dev vda, sector 8 op 0x1:(WRITE) flags 0x8800 phys_seg 1 prio class 2",
		"[    5.100000] Buffer I/O error on dev vda, logical block 1, lost async page write",
		"[    6.000000] INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
		"[    6.000001] virtio_blk virtio0: virtio_blk error: bad request",
		"[    7.000000] EXT4-fs error (device vda): ext4_find_entry:1683: inode #2: comm agent: reading directory lblock 0",
		"[    8.000000] Trying to write to read-only block-device vda",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("KernelTrouble found\n%q\nwant\n%q", got, want)
	}
	excused := KernelTrouble(console, regexp.MustCompile(`Trying to write to read-only block-device vda$`))
	if !slices.Equal(excused, want[:5]) {
		t.Fatalf("with the read-only line excused, KernelTrouble found\n%q\nwant\n%q", excused, want[:5])
	}
}
