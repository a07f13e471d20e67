package frontend

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/virtio"
)

func TestQSDWriteReadFlush(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"plain", Options{}},
		{"indirect+eventidx+segments", Options{Indirect: true, EventIdx: true, SegSize: 1024}},
		{"memslots+2regions", Options{MemSlots: true, Regions: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 8 << 20
			sock, img := vhosttest.StartQSD(t, vhosttest.QSDOptions{Size: size})
			d, err := Connect(sock, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if got := d.Capacity(); got != size/virtio.BlkSectorSize {
				t.Fatalf("capacity %d sectors, want %d", got, size/virtio.BlkSectorSize)
			}
			q := d.Queues[0]
			data := bytes.Repeat([]byte("nvblk-qsd"), 8192)[:64<<10]
			if err := q.Do(&Request{Type: virtio.BlkTOut, Sector: 8, Data: data}, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := q.Do(&Request{Type: virtio.BlkTFlush}, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			rd := &Request{Type: virtio.BlkTIn, Sector: 8, Data: got}
			if err := q.Do(rd, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("read back differs from written data")
			}
			if rd.Written != uint32(len(data))+1 {
				t.Errorf("IN used len %d, want %d", rd.Written, len(data)+1)
			}
			file, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(file[8*virtio.BlkSectorSize:8*virtio.BlkSectorSize+len(data)], data) {
				t.Fatal("image file does not hold the written data")
			}
		})
	}
}
