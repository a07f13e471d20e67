package btt_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/crashmedium"
)

// oldBTT is what a medium held before a new format: nothing, or a BTT with
// some sectors written.
type oldBTT struct {
	opts    *btt.FormatOptions // nil: a blank medium
	written map[uint64][]byte
}

func buildOld(t *testing.T, old oldBTT) []byte {
	t.Helper()
	img := crashmedium.NewImage(make([]byte, crashMediumSize))
	if old.opts == nil {
		return img.Bytes()
	}
	if err := btt.Format(img, *old.opts); err != nil {
		t.Fatal(err)
	}
	d, err := btt.Open(img, btt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for lba, b := range old.written {
		if err := d.WriteV(lba, [][]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return img.Bytes()
}

// verifyFormatCrash: a crash mid-format leaves no BTT, the old BTT whole,
// or the new BTT whole and empty. A torn info block may make Open use its
// backup, which check reports and repairs; nothing else may be wrong.
func verifyFormatCrash(m btt.Medium, old oldBTT, newUUID [16]byte) (string, error) {
	d, err := btt.Open(m, btt.Options{ReadOnly: true})
	if errors.Is(err, btt.ErrNotFound) {
		return "none", nil
	}
	if err != nil {
		return "", fmt.Errorf("open: %w (neither no BTT nor a valid one)", err)
	}
	defer d.Close()
	var which string
	buf := make([]byte, d.SectorSize())
	switch {
	case d.UUID() == newUUID:
		which = "new"
		for _, lba := range []uint64{0, 1, 2, 100, d.NumSectors() - 1} {
			if err := d.ReadV(lba, [][]byte{buf}); err != nil {
				return which, fmt.Errorf("new BTT: read LBA %d: %w", lba, err)
			}
			if !bytes.Equal(buf, make([]byte, len(buf))) {
				return which, fmt.Errorf("new BTT: LBA %d is not empty", lba)
			}
		}
	case old.opts != nil && d.UUID() == old.opts.UUID:
		which = "old"
		for lba, want := range old.written {
			if err := d.ReadV(lba, [][]byte{buf}); err != nil {
				return which, fmt.Errorf("old BTT: read LBA %d: %w", lba, err)
			}
			if !bytes.Equal(buf, want) {
				return which, fmt.Errorf("old BTT presented half-overwritten: LBA %d changed", lba)
			}
		}
	default:
		return "", fmt.Errorf("open found a BTT with uuid %x, neither old nor new", d.UUID())
	}
	rep, err := btt.Check(m, btt.CheckOptions{})
	if err != nil {
		return which, fmt.Errorf("%s BTT: check: %w", which, err)
	}
	for _, p := range rep.Problems {
		if !p.Repairable || (p.Kind != btt.ProblemInfo && p.Kind != btt.ProblemInfo2) {
			return which, fmt.Errorf("%s BTT: check: %s problem: %s", which, p.Kind, p.Message)
		}
	}
	return which, nil
}

func exploreFormat(t *testing.T, old oldBTT, opts btt.FormatOptions) {
	t.Helper()
	m, err := crashmedium.NewFrom(buildOld(t, old))
	if err != nil {
		t.Fatal(err)
	}
	if err := btt.Format(m, opts); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	r := m.Replay()
	images := 0
	for ; !r.Done(); r.Advance() {
		k := r.Point()
		names, keeps := subsets(m.Pending(k), uint64(k))
		for i, keep := range keeps {
			img, err := r.Image(keep)
			if err != nil {
				t.Fatal(err)
			}
			images++
			which, err := verifyFormatCrash(img, old, opts.UUID)
			if err != nil {
				t.Fatalf("crash at point %d of format's %d barriers, kept %s of %d pending words: %v",
					k, m.Barriers(), names[i], len(m.Pending(k)), err)
			}
			seen[which]++
		}
	}
	if seen["new"] == 0 {
		t.Fatal("no crash point showed the finished format")
	}
	t.Logf("%d crash points, %d crash images: %v", m.Barriers()+1, images, seen)
}

func uuid(b byte) [16]byte {
	return [16]byte{b, 1, 2, 3, 4, 5, 0x46, 7, 0x88, 9, 10, 11, 12, 13, 14, 15}
}

func writtenSectors(size uint32) map[uint64][]byte {
	return map[uint64][]byte{0: sectorContent(size, 900, 0), 7: sectorContent(size, 901, 7), 300: sectorContent(size, 902, 300)}
}

func TestCrashDuringFormatOfABlankMediumLeavesNoBTTOrAnEmptyOne(t *testing.T) {
	exploreFormat(t, oldBTT{}, btt.FormatOptions{LBASize: 4096, UUID: uuid(0xb0)})
}

func TestCrashDuringReformatLeavesTheOldBTTWholeOrNone(t *testing.T) {
	exploreFormat(t,
		oldBTT{opts: &btt.FormatOptions{LBASize: 512, UUID: uuid(0x01)}, written: writtenSectors(512)},
		btt.FormatOptions{LBASize: 4096, UUID: uuid(0x02)})
}

func TestCrashDuringVersion11FormatOverAVersion20BTTLeavesTheOldWholeOrNone(t *testing.T) {
	exploreFormat(t,
		oldBTT{opts: &btt.FormatOptions{LBASize: 4096, UUID: uuid(0x20), Version: btt.Version20}, written: writtenSectors(4096)},
		btt.FormatOptions{LBASize: 4096, UUID: uuid(0x11)})
}

func TestCrashDuringVersion20FormatOverAVersion11BTTLeavesTheOldWholeOrNone(t *testing.T) {
	exploreFormat(t,
		oldBTT{opts: &btt.FormatOptions{LBASize: 4096, UUID: uuid(0x11)}, written: writtenSectors(4096)},
		btt.FormatOptions{LBASize: 4096, UUID: uuid(0x20), Version: btt.Version20})
}
