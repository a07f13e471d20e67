package virtq

import (
	"encoding/binary"
	"errors"
	"testing"
)

// fuzzPackedLayout splits a fuzz input into a packed ring's setup and
// guest bytes: [0] flags (bit0 EVENT_IDX, bit1 INDIRECT_DESC, bits 2-4
// size-1 in 1..8, bit 5 size times 16), [1:3] last avail (with its wrap
// bit), then the descriptor ring, the driver area and the rest at
// fuzzIndirectGPA.
func fuzzPackedLayout(data []byte) (cfg Config, lastAvail uint16, ring, driver, rest []byte, ok bool) {
	if len(data) < 3 {
		return cfg, 0, nil, nil, nil, false
	}
	size := uint16(data[0]>>2&7) + 1 // packed sizes need not be powers of 2
	if data[0]&0x20 != 0 {
		size *= 16
	}
	cfg = Config{Size: size, DescAddr: descGPA, AvailAddr: driverAreaGPA, UsedAddr: deviceAreaGPA,
		EventIdx: data[0]&1 != 0, IndirectDesc: data[0]&2 != 0, Packed: true}
	lastAvail = binary.LittleEndian.Uint16(data[1:])
	data = data[3:]
	take := func(n int) []byte {
		n = min(n, len(data))
		b := data[:n]
		data = data[n:]
		return b
	}
	ring = take(descSize * int(size))
	driver = take(eventSize)
	rest = take(bufLen)
	return cfg, lastAvail, ring, driver, rest, true
}

// fuzzPackedSeed is a well-formed ring of 8 at lap 1: a 3-descriptor chain
// (id 5), then, with indirect, a chain through a 2-entry table (id 2).
func fuzzPackedSeed(eventIdx, indirect bool) []byte {
	const size = 8
	flags := byte(7 << 2)
	if eventIdx {
		flags |= 1
	}
	if indirect {
		flags |= 2
	}
	b := []byte{flags, 0, 0x80}
	ring := make([]byte, descSize*size)
	put := func(tbl []byte, i int, addr uint64, n uint32, id, f uint16) {
		e := tbl[i*descSize:]
		binary.LittleEndian.PutUint64(e[0:], addr)
		binary.LittleEndian.PutUint32(e[8:], n)
		binary.LittleEndian.PutUint16(e[12:], id)
		binary.LittleEndian.PutUint16(e[14:], f)
	}
	put(ring, 0, bufBase+0x1000, 16, 0, descFAvail|descFNext)
	put(ring, 1, bufBase+0x1010, 512, 0, descFAvail|descFNext|descFWrite)
	put(ring, 2, bufBase+0x1210, 1, 5, descFAvail|descFWrite)
	put(ring, 3, fuzzIndirectGPA, 2*descSize, 2, descFAvail|descFIndirect)
	rest := make([]byte, 2*descSize)
	put(rest, 0, bufBase+0x2000, 528, 0, 0)
	put(rest, 1, bufBase+0x2210, 1, 0, descFWrite)
	b = append(b, ring...)
	b = append(b, 0, 0, 0, 0) // driver area: ENABLE
	return append(b, rest...)
}

// fuzzPackedSeedWrapping is a ring of 4 whose chain starts at 3, on the
// second lap (wrap counter 0), and runs on into the third lap.
func fuzzPackedSeedWrapping() []byte {
	b := []byte{3 << 2, 3, 0}
	ring := make([]byte, descSize*4)
	put := func(i int, n uint32, id, f uint16) {
		e := ring[i*descSize:]
		binary.LittleEndian.PutUint64(e[0:], bufBase+uint64(i)*0x100)
		binary.LittleEndian.PutUint32(e[8:], n)
		binary.LittleEndian.PutUint16(e[12:], id)
		binary.LittleEndian.PutUint16(e[14:], f)
	}
	put(3, 16, 0, descFUsed|descFNext)             // lap with wrap 0
	put(0, 64, 0, descFAvail|descFNext|descFWrite) // next lap, wrap 1
	put(1, 1, 3, descFAvail|descFWrite)
	b = append(b, ring...)
	return append(b, 0, 0, 1, 0)
}

func FuzzNextPacked(f *testing.F) {
	f.Add(fuzzPackedSeed(false, false))
	f.Add(fuzzPackedSeed(true, true))
	f.Add(fuzzPackedSeed(false, true))
	f.Add(fuzzPackedSeedWrapping())
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, lastAvail, ring, driver, rest, ok := fuzzPackedLayout(data)
		if !ok {
			return
		}
		mem := newGuestMem()
		copy(mem.slice(t, descGPA, uint64(len(ring))), ring)
		copy(mem.slice(t, driverAreaGPA, uint64(len(driver))), driver)
		copy(mem.slice(t, fuzzIndirectGPA, uint64(len(rest))), rest)
		q, err := New(mem, cfg)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		q.SetUsedIdx(lastAvail)
		q.SetLastAvail(lastAvail)
		c := q.NewChain()
		var heads []uint16
		// At most size chains fit; completing none of them, the ring
		// must run dry or break by then.
		for range int(cfg.Size) + 1 {
			ok, err := q.Next(c)
			if errors.Is(err, ErrBroken) {
				if ok {
					t.Fatal("ErrBroken with ok")
				}
				break
			}
			if !ok {
				if err != nil {
					t.Fatalf("not ok with %v", err)
				}
				break
			}
			if err != nil && !errors.Is(err, ErrBadChain) {
				t.Fatalf("unexpected error %v", err)
			}
			if c.Head >= cfg.Size {
				t.Fatalf("buffer id %d >= size %d", c.Head, cfg.Size)
			}
			if n := len(q.Taken()); n == 0 || n > int(cfg.Size) {
				t.Fatalf("chain of %d ring descriptors on a ring of %d", n, cfg.Size)
			}
			if len(c.Segments) > segmentsPerEntry*MaxSize {
				t.Fatalf("%d segments", len(c.Segments))
			}
			heads = append(heads, c.Head)
		}
		if len(heads) > int(cfg.Size) {
			t.Fatalf("%d chains in flight on a ring of %d", len(heads), cfg.Size)
		}
		for _, h := range heads {
			q.Push(h, 1)
		}
		q.Publish()
		if q.Err() == nil && q.UsedIdx() != q.LastAvail() {
			t.Fatalf("all completed, but used at %#x and avail at %#x", q.UsedIdx(), q.LastAvail())
		}
		q.DisableKicks()
		q.EnableKicks()
	})
}
