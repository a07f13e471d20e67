package virtq

import (
	"encoding/binary"
	"errors"
	"testing"
)

// fuzzIndirectGPA is where the fuzz input's extra bytes land: a place
// descriptors can point at (indirect tables, buffers).
const fuzzIndirectGPA = bufBase

// fuzzLayout splits a fuzz input into the queue setup and the guest bytes:
// [0] flags (bit0 EVENT_IDX, bit1 INDIRECT_DESC, bits 2-4 log2 size),
// [1:3] last avail, then the descriptor table, the avail ring, and the rest
// at fuzzIndirectGPA.
func fuzzLayout(data []byte) (cfg Config, lastAvail uint16, desc, avail, rest []byte, ok bool) {
	if len(data) < 3 {
		return cfg, 0, nil, nil, nil, false
	}
	size := uint16(1) << ((data[0] >> 2) & 7) // 1..128
	cfg = Config{Size: size, DescAddr: descGPA, AvailAddr: availGPA, UsedAddr: usedGPA,
		EventIdx: data[0]&1 != 0, IndirectDesc: data[0]&2 != 0}
	lastAvail = binary.LittleEndian.Uint16(data[1:])
	data = data[3:]
	take := func(n int) []byte {
		n = min(n, len(data))
		b := data[:n]
		data = data[n:]
		return b
	}
	desc = take(descSize * int(size))
	avail = take(6 + 2*int(size))
	rest = take(bufLen)
	return cfg, lastAvail, desc, avail, rest, true
}

// fuzzSeed builds an input holding a well-formed ring: a direct chain and,
// if indirect, an indirect one.
func fuzzSeed(eventIdx, indirect bool) []byte {
	const size = 8
	flags := byte(3 << 2)
	if eventIdx {
		flags |= 1
	}
	if indirect {
		flags |= 2
	}
	b := []byte{flags, 0, 0}
	desc := make([]byte, descSize*size)
	put := func(tbl []byte, i int, addr uint64, n uint32, f, next uint16) {
		e := tbl[i*descSize:]
		binary.LittleEndian.PutUint64(e[0:], addr)
		binary.LittleEndian.PutUint32(e[8:], n)
		binary.LittleEndian.PutUint16(e[12:], f)
		binary.LittleEndian.PutUint16(e[14:], next)
	}
	put(desc, 0, bufBase+0x1000, 16, descFNext, 1)
	put(desc, 1, bufBase+0x1010, 512, descFNext|descFWrite, 2)
	put(desc, 2, bufBase+0x1210, 1, descFWrite, 0)
	put(desc, 3, fuzzIndirectGPA, 2*descSize, descFIndirect, 0)
	avail := make([]byte, 6+2*size)
	binary.LittleEndian.PutUint16(avail[2:], 2)
	binary.LittleEndian.PutUint16(avail[4:], 0)
	binary.LittleEndian.PutUint16(avail[6:], 3)
	rest := make([]byte, 2*descSize)
	put(rest, 0, bufBase+0x2000, 528, descFNext, 1)
	put(rest, 1, bufBase+0x2210, 1, descFWrite, 0)
	b = append(b, desc...)
	b = append(b, avail...)
	return append(b, rest...)
}

// fuzzSeedAdjacent is fuzzSeed's direct chain with its data buffer running
// across the boundaries of the adjacent regions, and its indirect chain's
// data buffer from them on into the hole after.
func fuzzSeedAdjacent() []byte {
	b := fuzzSeed(false, true)
	desc := b[3 : 3+descSize*8]
	binary.LittleEndian.PutUint64(desc[1*descSize:], adjBase+adjLen-100)
	binary.LittleEndian.PutUint32(desc[1*descSize+8:], adjLen+200)
	rest := b[3+descSize*8+6+2*8:]
	binary.LittleEndian.PutUint64(rest[0:], adjEnd-16)
	binary.LittleEndian.PutUint32(rest[8:], 32)
	return b
}

func FuzzNext(f *testing.F) {
	f.Add(fuzzSeed(false, false))
	f.Add(fuzzSeed(true, true))
	f.Add(fuzzSeed(false, true))
	f.Add(fuzzSeedAdjacent())
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, lastAvail, desc, avail, rest, ok := fuzzLayout(data)
		if !ok {
			return
		}
		mem := newGuestMem()
		copy(mem.slice(t, descGPA, uint64(len(desc))), desc)
		copy(mem.slice(t, availGPA, uint64(len(avail))), avail)
		copy(mem.slice(t, fuzzIndirectGPA, uint64(len(rest))), rest)
		q, err := New(mem, cfg)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		q.SetLastAvail(lastAvail)
		c := q.NewChain()
		// At most size chains can be pending; anything more is ErrBroken.
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
			if c.Head >= cfg.Size {
				t.Fatalf("head %d >= size %d", c.Head, cfg.Size)
			}
			if err != nil && !errors.Is(err, ErrBadChain) {
				t.Fatalf("unexpected error %v", err)
			}
			if len(c.Segments) > segmentsPerEntry*MaxSize {
				t.Fatalf("%d segments", len(c.Segments))
			}
			for i, s := range c.Segments {
				if s.Continues && (i == 0 || c.Segments[i-1].Writable != s.Writable || len(s.Buf) == 0) {
					t.Fatalf("segment %d continues nothing: %+v", i, c.Segments)
				}
			}
			var n uint32
			if st, ok := c.Status(); ok {
				st[0] = 1
				n = 1
			}
			q.Push(c.Head, n)
		}
		if ok, err := q.Next(c); ok && err == nil {
			t.Fatal("ring not drained after size+1 pops")
		}
		q.Publish()
		q.DisableKicks()
		q.EnableKicks()
	})
}
