package btt_test

import (
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/crashmedium"
)

func TestVersion20FormatOverAVersion11BTTReplacesIt(t *testing.T) {
	img := crashmedium.NewImage(make([]byte, crashMediumSize))
	if err := btt.Format(img, btt.FormatOptions{LBASize: 4096, UUID: uuid(0x11)}); err != nil {
		t.Fatal(err)
	}
	if err := btt.Format(img, btt.FormatOptions{LBASize: 4096, UUID: uuid(0x20), Version: btt.Version20}); err != nil {
		t.Fatal(err)
	}
	d, err := btt.Open(img, btt.Options{})
	if err != nil {
		t.Fatalf("open after a finished v2.0 format: %v", err)
	}
	if d.Version() != btt.Version20 || d.UUID() != uuid(0x20) {
		t.Fatalf("open found version %s uuid %x: the old BTT, not the new one", d.Version(), d.UUID())
	}
}
