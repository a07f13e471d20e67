package virtq

import (
	"sync/atomic"
	"testing"
)

// BenchmarkNextPush measures one request round trip on the device side: pop
// a 3-descriptor chain (header, 4 KiB data, status), push and publish it.
// The driver's re-offer of the same head is included.
func BenchmarkNextPush(b *testing.B) {
	for _, bc := range []struct {
		name               string
		eventIdx, indirect bool
	}{{"direct", false, false}, {"direct-eventidx", true, false}, {"indirect-eventidx", true, true}} {
		b.Run(bc.name, func(b *testing.B) {
			d := newDriver(b, 256)
			q := d.queue(bc.eventIdx, bc.indirect)
			descs := []desc{
				{addr: d.alloc(16, 0), len: 16},
				{addr: d.alloc(4096, 0), len: 4096, flags: descFWrite},
				{addr: d.alloc(1, 0), len: 1, flags: descFWrite},
			}
			if bc.indirect {
				t := d.alloc(3*descSize, 0)
				descs[0].flags, descs[0].next = descFNext, 1
				descs[1].flags, descs[1].next = descFWrite|descFNext, 2
				d.writeDescs(t, 0, descs...)
				d.chain(0, desc{addr: t, len: 3 * descSize, flags: descFIndirect})
			} else {
				d.chain(0, descs...)
			}
			q.DisableKicks()
			c := q.NewChain()
			// The driver side, resolved once so the loop times the device.
			ring := d.mem.slice(b, availGPA+4, 2*256)
			idx := d.word(availGPA + 2)
			var next uint16
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				ring[2*(next&255)], ring[2*(next&255)+1] = 0, 0
				next++
				atomic.StoreUint32(idx.w, setHalf(atomic.LoadUint32(idx.w), idx.shift, next))
				ok, err := q.Next(c)
				if !ok || err != nil {
					b.Fatal(ok, err)
				}
				q.Push(c.Head, 4097)
				q.Publish()
			}
		})
	}
}
