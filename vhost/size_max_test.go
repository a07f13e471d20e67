package vhost_test

import (
	"testing"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// The Go front-end accepts SIZE_MAX only when it splits its data into
// descriptors no larger than the device's size_max; otherwise it would
// promise what it does not keep and its large requests would be refused.
func TestFrontendAcceptsSizeMaxOnlyWhenItSplitsFinelyEnough(t *testing.T) {
	e := startEnv(t, envOpts{})
	for _, tt := range []struct {
		name    string
		segSize int
		want    bool
	}{
		{"one descriptor per request", 0, false},
		{"descriptors of 64 KiB", 64 << 10, true},
		{"descriptors of 4 MiB", 4 << 20, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, err := frontend.Connect(e.sock, frontend.Options{SegSize: tt.segSize, MaxIO: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if got := d.Features&virtio.BlkFSizeMax != 0; got != tt.want {
				t.Errorf("SIZE_MAX accepted = %v, want %v", got, tt.want)
			}
			data := make([]byte, 1<<20)
			if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Data: data}, ioTimeout); err != nil {
				t.Errorf("1 MiB read: %v", err)
			}
		})
	}
}
