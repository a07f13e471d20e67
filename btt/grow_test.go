package btt_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/crashmedium"
)

const (
	growFrom = 20<<20 + 4096 // one arena, and a tail too small for another
	growTo   = 56 << 20      // room for another, of 36 MiB
)

// grownImage is a formatted BTT of growFrom bytes with some sectors
// written, at the start of a medium of growTo bytes (the file extended).
func grownImage(t *testing.T) (img []byte, written map[uint64][]byte, sectors uint64) {
	t.Helper()
	small := crashmedium.NewImage(make([]byte, growFrom))
	if err := btt.Format(small, btt.FormatOptions{LBASize: 4096}); err != nil {
		t.Fatal(err)
	}
	d, err := btt.Open(small, btt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	written = map[uint64][]byte{}
	for _, lba := range []uint64{0, 1, 100, d.NumSectors() - 1} {
		b := sectorContent(4096, int(lba), lba)
		if err := d.WriteV(lba, [][]byte{b}); err != nil {
			t.Fatal(err)
		}
		written[lba] = b
	}
	sectors = d.NumSectors()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	img = make([]byte, growTo)
	copy(img, small.Bytes())
	return img, written, sectors
}

func TestGrowAppendsArenasAndKeepsEverySector(t *testing.T) {
	img, written, before := grownImage(t)
	m := crashmedium.NewImage(img)
	res, err := btt.Grow(m)
	if err != nil {
		t.Fatal(err)
	}
	if res.Arenas != 1 || res.SectorsBefore != before || res.SectorsAfter <= before {
		t.Fatalf("grow: %+v (before %d sectors)", res, before)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.NumSectors() != res.SectorsAfter || len(d.Arenas()) != 2 {
		t.Fatalf("grown device: %d sectors in %d arenas, want %d in 2", d.NumSectors(), len(d.Arenas()), res.SectorsAfter)
	}
	buf := make([]byte, 4096)
	for lba, want := range written {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil || !bytes.Equal(buf, want) {
			t.Fatalf("LBA %d after grow: %v", lba, err)
		}
	}
	last := d.NumSectors() - 1
	want := sectorContent(4096, 7, last)
	if err := d.WriteV(last, [][]byte{want}); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadV(last, [][]byte{buf}); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("the new last LBA %d: %v", last, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := checkConsistent(m, true); err != nil {
		t.Fatal(err)
	}
	if _, err := btt.Grow(m); !errors.Is(err, btt.ErrNoRoomToGrow) {
		t.Fatalf("a second grow with no new space: %v, want ErrNoRoomToGrow", err)
	}
}

// A crash at every persist barrier of Grow, keeping any subset of the words
// pending there, leaves the old BTT or the grown one: it opens, every
// written sector reads back, the capacity is one of the two, and a Grow run
// again ends with the grown one.
func TestCrashAtEveryBarrierOfGrowLeavesTheOldBTTOrTheGrownOne(t *testing.T) {
	img, written, before := grownImage(t)
	m, err := crashmedium.NewFrom(img)
	if err != nil {
		t.Fatal(err)
	}
	res, err := btt.Grow(m)
	if err != nil {
		t.Fatal(err)
	}
	r := m.Replay()
	points, images, old, grown := 0, 0, 0, 0
	for ; !r.Done(); points++ {
		k := r.Point()
		names, keeps := subsets(m.Pending(k), uint64(k)<<8|7)
		for i, keep := range keeps {
			cimg, err := r.Image(keep)
			if err != nil {
				t.Fatal(err)
			}
			images++
			n, err := verifyGrowCrash(cimg, written, before, res.SectorsAfter)
			if err != nil {
				t.Fatalf("crash at point %d of %d, pending words kept %s: %v", k, m.Barriers(), names[i], err)
			}
			if n == before {
				old++
			} else {
				grown++
			}
		}
		if err := r.Advance(); err != nil {
			t.Fatal(err)
		}
	}
	if old == 0 || grown == 0 {
		t.Fatalf("%d images kept the old BTT, %d the grown one: the crash points miss one side", old, grown)
	}
	t.Logf("%d barriers, %d crash points, %d images: %d the old BTT, %d the grown one", m.Barriers(), points, images, old, grown)
}

func verifyGrowCrash(img *crashmedium.Image, written map[uint64][]byte, before, after uint64) (uint64, error) {
	d, err := btt.Open(img, btt.Options{})
	if err != nil {
		return 0, fmt.Errorf("open: %w", err)
	}
	n := d.NumSectors()
	if n != before && n != after {
		d.Close()
		return 0, fmt.Errorf("%d sectors, want %d (old) or %d (grown)", n, before, after)
	}
	buf := make([]byte, 4096)
	for lba, want := range written {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil || !bytes.Equal(buf, want) {
			d.Close()
			return 0, fmt.Errorf("LBA %d: %v, same data %v", lba, err, bytes.Equal(buf, want))
		}
	}
	if err := d.Close(); err != nil {
		return 0, err
	}
	if _, err := btt.Grow(img); err != nil && !errors.Is(err, btt.ErrNoRoomToGrow) {
		return 0, fmt.Errorf("grow again: %w", err)
	}
	d, err = btt.Open(img, btt.Options{})
	if err != nil {
		return 0, fmt.Errorf("open after growing again: %w", err)
	}
	defer d.Close()
	if d.NumSectors() != after {
		return 0, fmt.Errorf("after growing again %d sectors, want %d", d.NumSectors(), after)
	}
	if err := checkConsistent(img, true); err != nil {
		return 0, fmt.Errorf("after growing again: %w", err)
	}
	return n, nil
}
