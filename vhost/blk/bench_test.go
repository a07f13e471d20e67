package blk

import (
	"testing"

	"github.com/nvblk/nvblk/virtio"
)

// BenchmarkHandle4K: one 4 KiB request through the handler into the fake
// disk (whose copy dominates); the point is 0 allocs/op.
func BenchmarkHandle4K(b *testing.B) {
	for _, bc := range []struct {
		name string
		req  request
	}{
		{"read", request{typ: virtio.BlkTIn, sector: 8, in: 4096}},
		{"write", request{typ: virtio.BlkTOut, sector: 8, out: make([]byte, 4096)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			disk := newFakeDisk(4096, 1024)
			h := NewDevice(disk, Options{}).NewHandler()
			c, mem := bc.req.build()
			b.SetBytes(4096)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if h.Handle(c).Written == 0 || mem[len(mem)-1] != virtio.BlkSOK {
					b.Fatal("request failed")
				}
			}
		})
	}
}
