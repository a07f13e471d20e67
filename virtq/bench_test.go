package virtq

import (
	"encoding/binary"
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

// BenchmarkNextPushPacked is BenchmarkNextPush on a packed ring: the
// driver makes the same 3-descriptor chain (or one indirect descriptor)
// available again at the next positions, flags last, and the device takes,
// pushes and publishes it.
func BenchmarkNextPushPacked(b *testing.B) {
	for _, bc := range []struct {
		name               string
		eventIdx, indirect bool
	}{{"direct", false, false}, {"direct-eventidx", true, false}, {"indirect-eventidx", true, true}} {
		b.Run(bc.name, func(b *testing.B) {
			const size = 256
			d := newPackedDriver(b, size)
			q := d.queue(bc.eventIdx, bc.indirect)
			descs := []desc{
				{addr: d.alloc(16, 0), len: 16},
				{addr: d.alloc(4096, 0), len: 4096, flags: descFWrite},
				{addr: d.alloc(1, 0), len: 1, flags: descFWrite},
			}
			if bc.indirect {
				t := d.alloc(3*descSize, 0)
				d.writeTable(t, descs...)
				descs = []desc{{addr: t, len: 3 * descSize, flags: descFIndirect}}
			}
			// The driver side, resolved once so the loop times the device:
			// every slot's descriptor written, only the flags words are
			// stored per request.
			words := make([]*uint32, size)
			for i := range words {
				words[i] = d.word(uint16(i))
			}
			n := uint16(len(descs))
			ring := d.mem.slice(b, descGPA, descSize*size)
			flagsAt := func(i int, wrap bool) uint32 {
				f := descs[i].flags
				if i < len(descs)-1 {
					f |= descFNext
				}
				return setHalf(setHalf(0, 0, 0), 2, availFlags(f, wrap))
			}
			put := func(pos ringPos) {
				for i := range descs {
					e := ring[descSize*int(pos.idx):]
					putLE64(e[packedDescOffAddr:], descs[i].addr)
					putLE32(e[packedDescOffLen:], descs[i].len)
					if i > 0 {
						atomic.StoreUint32(words[pos.idx], flagsAt(i, pos.wrap))
					}
					pos.advance(1, size)
				}
			}
			q.DisableKicks()
			c := q.NewChain()
			pos := ringPos{wrap: true}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				put(pos)
				atomic.StoreUint32(words[pos.idx], flagsAt(0, pos.wrap))
				pos.advance(n, size)
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

func putLE64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }
func putLE32(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }
