package btt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"sync"
	"testing"
)

func formatOpen(t testing.TB, size int64, lbasize uint32) (*memMedium, *Device) {
	t.Helper()
	m := newMemMedium(size)
	if err := Format(m, FormatOptions{LBASize: lbasize}); err != nil {
		t.Fatalf("format: %v", err)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return m, d
}

// pattern fills a sector with bytes derived from (lba, gen).
func pattern(size uint32, lba uint64, gen int) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(lba, uint64(gen)))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestFormatOpenWriteReadEverySectorSize(t *testing.T) {
	for _, lbasize := range SupportedLBASizes {
		t.Run(fmt.Sprint(lbasize), func(t *testing.T) {
			m, d := formatOpen(t, 32<<20, lbasize)
			ss := d.SectorSize()
			if want := dataSectorSize(lbasize); ss != want {
				t.Fatalf("sector size %d, want %d", ss, want)
			}
			n := d.NumSectors()
			lbas := []uint64{0, 1, 17, n / 2, n - 1}
			for i, lba := range lbas {
				if err := d.WriteV(lba, [][]byte{pattern(ss, lba, i)}); err != nil {
					t.Fatalf("write %d: %v", lba, err)
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			d, err := Open(m, Options{})
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			got := make([]byte, ss)
			for i, lba := range lbas {
				if err := d.ReadV(lba, [][]byte{got}); err != nil {
					t.Fatalf("read %d: %v", lba, err)
				}
				if !bytes.Equal(got, pattern(ss, lba, i)) {
					t.Errorf("LBA %d: read back differs from what was written", lba)
				}
			}
			if err := d.ReadV(2, [][]byte{got}); err != nil || !bytes.Equal(got, make([]byte, ss)) {
				t.Errorf("unwritten LBA 2 of a fresh medium: err %v, zero %v", err, bytes.Equal(got, make([]byte, ss)))
			}
			rep, err := Check(m, CheckOptions{})
			if err != nil || !rep.Consistent {
				t.Fatalf("check after writes: err %v, problems %+v", err, rep.Problems)
			}
		})
	}
}

func TestOverwriteMovesTheSectorToTheLanesFreeBlock(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	a := d.arenaList()[0]
	for gen := 0; gen < 5; gen++ {
		if err := d.WriteV(7, [][]byte{pattern(4096, 7, gen)}); err != nil {
			t.Fatal(err)
		}
		block, _, _ := a.lookup(7)
		if block == 7 {
			t.Fatalf("gen %d: LBA 7 still on its identity block", gen)
		}
	}
	got := make([]byte, 4096)
	if err := d.ReadV(7, [][]byte{got}); err != nil || !bytes.Equal(got, pattern(4096, 7, 4)) {
		t.Fatalf("read after 5 overwrites: %v", err)
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep.Problems)
	}
}

func TestSectorStraddlingIOVectorSegments(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 512)
	want := append(pattern(512, 3, 1), pattern(512, 4, 1)...)
	// Segments of 100, 0, 700 and 224 bytes: sector boundaries fall inside them.
	iov := [][]byte{want[:100], want[100:100], want[100:800], want[800:]}
	if err := d.WriteV(3, iov); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1024)
	if err := d.ReadV(3, [][]byte{got[:1], got[1:513], got[513:]}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data through unaligned segments differs")
	}
}

func TestIOPastCapacityIsRefused(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	buf := make([]byte, 8192)
	n := d.NumSectors()
	for _, lba := range []uint64{n - 1, n, 1 << 63, ^uint64(0)} {
		if err := d.WriteV(lba, [][]byte{buf}); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("write 2 sectors at %d: %v, want ErrOutOfRange", lba, err)
		}
		if err := d.ReadV(lba, [][]byte{buf}); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("read 2 sectors at %d: %v, want ErrOutOfRange", lba, err)
		}
	}
	if err := d.WriteZeroes(n-1, 2); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("write zeroes past the end: %v", err)
	}
}

func TestPartialSectorIsMisaligned(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 4096)
	if err := d.WriteV(0, [][]byte{make([]byte, 512)}); !errors.Is(err, ErrMisaligned) {
		t.Errorf("512 bytes to a 4 KiB-sector device: %v", err)
	}
}

func TestWriteZeroesReadsZeroAndKeepsTheBlock(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 4096)
	for lba := uint64(0); lba < 4; lba++ {
		if err := d.WriteV(lba, [][]byte{pattern(4096, lba, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.WriteZeroes(1, 2); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4*4096)
	if err := d.ReadV(0, [][]byte{got}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], pattern(4096, 0, 0)) || !bytes.Equal(got[3*4096:], pattern(4096, 3, 0)) {
		t.Error("neighbours of the zeroed range changed")
	}
	if !bytes.Equal(got[4096:3*4096], make([]byte, 2*4096)) {
		t.Error("zeroed range does not read as zeroes")
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
		t.Fatalf("check after write zeroes: %v %+v", err, rep.Problems)
	}
	// A write after trimming clears the Z flag again.
	if err := d.WriteV(1, [][]byte{pattern(4096, 1, 9)}); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadV(1, [][]byte{got[:4096]}); err != nil || !bytes.Equal(got[:4096], pattern(4096, 1, 9)) {
		t.Errorf("write after zeroes: %v", err)
	}
	if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
		t.Fatalf("check: %v %+v", err, rep.Problems)
	}
}

func TestReadOnlyDeviceRefusesWrites(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 512)
	d.Close()
	before := bytes.Clone(m.buf)
	d, err := Open(m, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteV(0, [][]byte{make([]byte, 512)}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write: %v", err)
	}
	if err := d.WriteZeroes(0, 1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write zeroes: %v", err)
	}
	d.Close()
	if !bytes.Equal(before, m.buf) {
		t.Error("a read-only open changed the medium")
	}
}

func TestErrorFlagOpensReadOnly(t *testing.T) {
	m, d := formatOpen(t, 32<<20, 512)
	d.Close()
	a := d.arenaList()[0]
	for _, off := range []int64{a.infoOff, a.info2Off} {
		b, _ := m.Slice(off, InfoSize)
		var in Info
		if err := in.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		in.Flags |= InfoFlagError
		in.encode(b)
	}
	d, err := Open(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !d.ReadOnly() {
		t.Fatal("arena with the error flag opened writable")
	}
	if err := d.WriteV(0, [][]byte{make([]byte, 512)}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write: %v", err)
	}
}

func TestIOAfterCloseFails(t *testing.T) {
	_, d := formatOpen(t, 32<<20, 512)
	d.Close()
	if err := d.ReadV(0, [][]byte{make([]byte, 512)}); !errors.Is(err, ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// stamp makes a self-describing sector: a header naming (lba, writer, seq)
// and a body derived from it, with a CRC over everything, so a reader can
// tell one complete version from a mix of two.
func stamp(b []byte, lba uint64, writer, seq uint32) {
	binary.LittleEndian.PutUint64(b[0:], lba)
	binary.LittleEndian.PutUint32(b[8:], writer)
	binary.LittleEndian.PutUint32(b[12:], seq)
	for i := 16; i < len(b)-4; i++ {
		b[i] = byte(uint32(i)*31 + writer*7 + seq)
	}
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.ChecksumIEEE(b[:len(b)-4]))
}

// seedStamped writes a stamped sector to each of the first span LBAs, so
// readers never meet an unwritten one.
func seedStamped(t *testing.T, d *Device, span uint64) {
	t.Helper()
	seed := make([]byte, d.SectorSize())
	for lba := uint64(0); lba < span; lba++ {
		stamp(seed, lba, 0, 0)
		if err := d.WriteV(lba, [][]byte{seed}); err != nil {
			t.Fatal(err)
		}
	}
}

func whole(b []byte) bool {
	return binary.LittleEndian.Uint32(b[len(b)-4:]) == crc32.ChecksumIEEE(b[:len(b)-4])
}

func TestConcurrentWritersAndReadersSeeWholeSectors(t *testing.T) {
	for _, lbasize := range []uint32{512, 4096} {
		t.Run(fmt.Sprint(lbasize), func(t *testing.T) {
			m, d := formatOpen(t, 32<<20, lbasize)
			ss := int(d.SectorSize())
			const span = 24 // few LBAs, so writers collide on map lines and blocks
			seedStamped(t, d, span)
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for w := uint32(1); w <= 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 1))
					buf := make([]byte, 2*ss)
					for seq := uint32(1); seq <= 300; seq++ {
						lba := r.Uint64N(span - 1)
						stamp(buf[:ss], lba, w, seq)
						stamp(buf[ss:], lba+1, w, seq)
						if err := d.WriteV(lba, [][]byte{buf}); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			for rd := 0; rd < 4; rd++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(rd), 2))
					buf := make([]byte, ss)
					for i := 0; i < 600; i++ {
						lba := r.Uint64N(span)
						if err := d.ReadV(lba, [][]byte{buf}); err != nil {
							errs <- err
							return
						}
						if !whole(buf) || binary.LittleEndian.Uint64(buf) != lba {
							errs <- fmt.Errorf("LBA %d: torn or misplaced sector (header lba %d)", lba, binary.LittleEndian.Uint64(buf))
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if rep, err := Check(m, CheckOptions{}); err != nil || !rep.Consistent {
				t.Fatalf("check: %v %+v", err, rep.Problems)
			}
		})
	}
}
