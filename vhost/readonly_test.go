package vhost_test

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// TestReadOnlyCannotBeBypassed: against a read-only backend over a real BTT
// no request type writes, the medium is untouched, and the mapping under
// the BTT is read-only, so even a bug above it could not write. "lying
// disk" stands for such a bug in the virtio-blk layer: it is told the disk
// is writable, and the BTT must refuse on its own.
func TestReadOnlyCannotBeBypassed(t *testing.T) {
	for _, cfg := range []struct {
		name string
		o    bttServerOpts
		// features: the device offers VIRTIO_BLK_F_RO
		ro bool
	}{
		{"as serve wires it", bttServerOpts{readOnly: true}, true},
		{"lying disk", bttServerOpts{readOnly: true, lyingDisk: true}, false},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			fdcheck.Check(t)
			s := startBTTServer(t, cfg.o)
			if !s.dev.ReadOnly() {
				t.Fatal("the BTT is not read-only")
			}
			if w := writableMappings(t, s.img); len(w) > 0 {
				t.Fatalf("the image is mapped writable: %q", w)
			}
			before := imageHash(t, s.img)
			d, err := frontend.Connect(s.sock, frontend.Options{NumQueues: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if got := d.Features&virtio.BlkFRO != 0; got != cfg.ro {
				t.Errorf("VIRTIO_BLK_F_RO offered %v, want %v", got, cfg.ro)
			}
			for _, rc := range []struct {
				name string
				r    frontend.Request
				want byte
			}{
				{"in", frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: make([]byte, 4096)}, virtio.BlkSOK},
				{"out", frontend.Request{Type: virtio.BlkTOut, Sector: 8, Data: pattern(21, 4096)}, virtio.BlkSIOErr},
				{"out past the end", frontend.Request{Type: virtio.BlkTOut, Sector: d.Capacity(), Data: pattern(21, 512)}, virtio.BlkSIOErr},
				{"write zeroes", frontend.Request{Type: virtio.BlkTWriteZeroes, Sector: 8, NumSectors: 8}, virtio.BlkSIOErr},
				{"write zeroes with unmap", frontend.Request{Type: virtio.BlkTWriteZeroes, Sector: 8, NumSectors: 8, Unmap: true}, virtio.BlkSIOErr},
				{"discard", frontend.Request{Type: virtio.BlkTDiscard, Sector: 8, NumSectors: 8}, virtio.BlkSIOErr},
				{"flush", frontend.Request{Type: virtio.BlkTFlush}, virtio.BlkSOK},
				{"get id", frontend.Request{Type: virtio.BlkTGetID, Data: make([]byte, virtio.BlkIDBytes)}, virtio.BlkSOK},
			} {
				for _, q := range d.Queues {
					r := rc.r
					r.Data = append([]byte(nil), rc.r.Data...)
					q.Do(&r, ioTimeout)
					if !r.Done || r.Status != rc.want {
						t.Errorf("%s on queue %d: done %v status %d, want %d", rc.name, q.Index, r.Done, r.Status, rc.want)
					}
				}
			}
			got := make([]byte, 4096)
			if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: got}, ioTimeout); err != nil {
				t.Fatal(err)
			}
			if string(got) != string(pattern(11, 128<<10)[8*512:8*512+4096]) {
				t.Error("sector 8 changed")
			}
			d.Close()
			if imageHash(t, s.img) != before {
				t.Error("the medium changed")
			}
		})
	}
}

// writableMappings lists this process's writable mappings of path.
func writableMappings(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var w []string
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[len(fields)-1] != path {
			continue
		}
		found = true
		if strings.Contains(fields[1], "w") {
			w = append(w, sc.Text())
		}
	}
	if !found {
		t.Fatalf("%s is not mapped", path)
	}
	return w
}
