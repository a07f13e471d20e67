package btt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"
)

// FuzzOpen: Open on metadata a fuzzer damaged must return a device or an
// error, never panic or hang, and must not write when it fails; a device it
// returns must survive reads, writes and Check.
//
// Input: byte 0 picks the base image (bit 0: 4096-byte sectors, else 512;
// bit 1: open read-only; bit 2: two 16 MiB arenas chained by nextoff, 4096-
// byte sectors), then patches of
//
//	u8 region (low 3 bits: info, info2, flog, map, data start of arena 0,
//	   then info and flog of arena 1 when there is one; bit 7: refresh the
//	   info block checksum after patching it)
//	u24 offset into the region (taken modulo its length)
//	u8 n, then n bytes
//
// Every base image holds written sectors, a trimmed one and a write the
// flog recorded but the map missed, so recovery runs on every Open.
func FuzzOpen(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{1})
	f.Add([]byte{2})
	f.Add([]byte{4})
	f.Add(fuzzPatch([]byte{4}, 6, 3*FlogGroupSize+12, []byte{2}))                // arena 1 flog
	f.Add(fuzzPatch([]byte{4}, 0x85, 16, []byte{1}))                             // arena 1 uuid
	f.Add(fuzzPatch(nil, 0, 200, []byte{0xff}))                                  // damaged info: info2 fallback
	f.Add(fuzzPatch(fuzzPatch([]byte{1}, 0, 200, []byte{1}), 1, 200, []byte{1})) // both damaged
	f.Add(fuzzPatch(nil, 0x80, 60, []byte{0xff, 0xff, 0xff, 0x7f}))              // external_nlba, re-checksummed
	f.Add(fuzzPatch(nil, 0x80, 88, []byte{0, 0x10, 0, 0, 0, 0, 0, 1}))           // dataoff
	f.Add(fuzzPatch(nil, 0x80, 80, []byte{0, 0, 0, 1}))                          // nextoff
	f.Add(fuzzPatch(nil, 2, 3*FlogGroupSize+12, []byte{2}))                      // flog sequence
	f.Add(fuzzPatch(nil, 2, 0, bytes.Repeat([]byte{0xff}, 64)))                  // flog group
	f.Add(fuzzPatch(nil, 3, 5*MapEntrySize, []byte{0xff, 0xff, 0xff, 0xc0}))
	f.Add(fuzzPatch(nil, 3, 5*MapEntrySize, []byte{6, 0, 0, 0xc0})) // duplicate postmap
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		base := fuzzBase(t, int(data[0]&1|data[0]>>1&2))
		// Two 17 MiB buffers per input: reuse them, or the GC is the
		// fuzzer's bottleneck.
		sc := fuzzScratch.Get().(*[2][]byte)
		defer fuzzScratch.Put(sc)
		m := &memMedium{buf: append(sc[0][:0], base.img...)}
		applyPatches(m, base, data[1:])
		before := append(sc[1][:0], m.buf...)
		sc[0], sc[1] = m.buf, before

		// A hang is a crash too; the fuzzer has no timeout of its own.
		watchdog := time.AfterFunc(20*time.Second, func() { panic("FuzzOpen: input hangs") })
		defer watchdog.Stop()

		ro := data[0]&2 != 0
		d, err := Open(m, Options{ReadOnly: ro})
		if err != nil {
			if d != nil {
				t.Fatalf("Open returned a device and an error: %v", err)
			}
			if !bytes.Equal(before, m.buf) {
				t.Fatalf("Open wrote to the medium and then failed: %v", err)
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) {
				t.Fatalf("Open: %v, want ErrCorrupt or ErrNotFound", err)
			}
			// Check may still find the layout; without repair it must not
			// write either.
			_, _ = Check(m, CheckOptions{})
			if !bytes.Equal(before, m.buf) {
				t.Fatal("Check without repair wrote to the medium")
			}
			return
		}
		exerciseDevice(t, d, data)
		if err := d.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if ro && !bytes.Equal(before, m.buf) {
			t.Fatal("a read-only device wrote to the medium")
		}
		after := append(before[:0], m.buf...)
		if _, err := Check(m, CheckOptions{}); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Check: %v", err)
		}
		if !bytes.Equal(after, m.buf) {
			t.Fatal("Check without repair wrote to the medium")
		}
		if _, err := Check(m, CheckOptions{Repair: true}); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Check --repair: %v", err)
		}
	})
}

// exerciseDevice reads and writes at a few LBAs, some chosen by the input.
// Errors are fine (the map may be damaged); panics and hangs are not.
func exerciseDevice(t *testing.T, d *Device, data []byte) {
	n := d.NumSectors()
	if n == 0 {
		t.Fatal("opened a device of 0 sectors")
	}
	ss := int(d.SectorSize())
	lbas := []uint64{0, 5, 6, n - 1, n / 2}
	for i := 0; i+4 <= len(data) && len(lbas) < 12; i += 7 {
		lbas = append(lbas, uint64(binary.LittleEndian.Uint32(data[i:]))%n)
	}
	buf := make([]byte, 2*ss)
	for i, lba := range lbas {
		cnt := 1 + i%2
		if lba+uint64(cnt) > n {
			cnt = 1
		}
		iov := [][]byte{buf[:cnt*ss/2+ss/3], buf[cnt*ss/2+ss/3 : cnt*ss]} // a sector straddling segments
		_ = d.ReadV(lba, iov)
		for j := range buf {
			buf[j] = byte(i + j)
		}
		if err := d.WriteV(lba, iov); err == nil {
			got := make([]byte, cnt*ss)
			if err := d.ReadV(lba, [][]byte{got}); err == nil && !bytes.Equal(got, buf[:cnt*ss]) {
				t.Fatalf("LBA %d: read after a successful write differs", lba)
			}
		} else if d.ReadOnly() && !errors.Is(err, ErrReadOnly) {
			t.Fatalf("write on a read-only device: %v", err)
		}
		if i%3 == 0 {
			_ = d.WriteZeroes(lba, 1)
		}
	}
	_ = d.ReadV(n, [][]byte{buf[:ss]}) // past the end: an error
	_ = d.Flush()
}

type fuzzImage struct {
	img     []byte
	regions [][2]int64 // info, info2, flog, map, data (, info, flog): offset and length
}

var (
	fuzzBases   [4]*fuzzImage
	fuzzBasesMu sync.Mutex
	fuzzScratch = sync.Pool{New: func() any { return new([2][]byte) }}
)

// fuzzBase builds (once) a small formatted medium with history: kind bit 0
// 4096-byte sectors, bit 1 two arenas.
func fuzzBase(t *testing.T, kind int) *fuzzImage {
	fuzzBasesMu.Lock()
	defer fuzzBasesMu.Unlock()
	if kind&2 != 0 {
		kind = 3 // the two-arena image has 4096-byte sectors
	}
	if fuzzBases[kind] != nil {
		return fuzzBases[kind]
	}
	var m *memMedium
	if kind&2 != 0 {
		m = twoArenas(t)
	} else {
		m = newMemMedium(17 << 20)
		lbasize := uint32(512)
		if kind&1 != 0 {
			lbasize = 4096
		}
		if err := Format(m, FormatOptions{LBASize: lbasize, UUID: [16]byte{0xf0, 0x22}}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ss := d.SectorSize()
	for lba := uint64(0); lba < 40; lba += 3 {
		if err := d.WriteV(lba, [][]byte{pattern(ss, lba, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.WriteZeroes(9, 2); err != nil {
		t.Fatal(err)
	}
	// A write that reached the flog but not the map (as interruptedWrite).
	a, premap := d.locate(20)
	fe := a.free[0]
	old, _, _ := a.lookup(premap)
	e := FlogEntry{LBA: premap, OldMap: old, NewMap: fe.block, Seq: fe.seq}
	lo, hi := e.halves()
	slot := a.logIndex[fe.sub] * FlogEntrySize
	storeWord64(a.flogArea, slot, lo)
	storeWord64(a.flogArea, slot+8, hi)
	img := &fuzzImage{img: m.buf}
	img.regions = [][2]int64{
		{a.infoOff, InfoSize},
		{a.info2Off, InfoSize},
		{a.logOff, int64(a.nfree) * FlogGroupSize},
		{a.mapOff, int64(a.externalNLBA) * MapEntrySize},
		{a.dataOff, 64 << 10},
	}
	if len(d.arenaList()) > 1 {
		a1 := d.arenaList()[1]
		img.regions = append(img.regions, [2]int64{a1.infoOff, InfoSize}, [2]int64{a1.logOff, int64(a1.nfree) * FlogGroupSize})
	}
	fuzzBases[kind] = img
	return img
}

// applyPatches applies the input's patches (see FuzzOpen).
func applyPatches(m *memMedium, base *fuzzImage, p []byte) {
	for len(p) >= 5 {
		region := p[0]
		off := int64(p[1]) | int64(p[2])<<8 | int64(p[3])<<16
		n := int(p[4])
		p = p[5:]
		n = min(n, len(p))
		r := base.regions[int(region&7)%len(base.regions)]
		for i := 0; i < n; i++ {
			m.buf[r[0]+(off+int64(i))%r[1]] = p[i]
		}
		p = p[n:]
		if ri := int(region&7) % len(base.regions); region&0x80 != 0 && (ri <= 1 || ri == 5) {
			b := m.buf[r[0] : r[0]+InfoSize]
			binary.LittleEndian.PutUint64(b[infoChecksumOff:], infoChecksum(b))
		}
	}
}

// fuzzPatch appends one patch in FuzzOpen's format (with flags byte 0 when
// b is nil).
func fuzzPatch(b []byte, region byte, off int, bytes []byte) []byte {
	if b == nil {
		b = []byte{0}
	}
	b = append(b, region, byte(off), byte(off>>8), byte(off>>16), byte(len(bytes)))
	return append(b, bytes...)
}
