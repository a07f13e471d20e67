package btt_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// A BTT on an emulated-NVDIMM file: create the file, lay a BTT over it,
// write one sector and read it back.
func Example() {
	dir, err := os.MkdirTemp("", "btt-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	m, err := pmem.Open(filepath.Join(dir, "disk.img"), pmem.Options{Create: true, Size: 32 << 20})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	if err := btt.Format(m, btt.FormatOptions{LBASize: 4096}); err != nil {
		log.Fatal(err)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d sectors of %d bytes\n", d.NumSectors(), d.SectorSize())

	// A sector may arrive split over several buffers, as a guest's request
	// does; WriteV and ReadV take it as an io-vector.
	sector := make([]byte, d.SectorSize())
	copy(sector, "hello, BTT")
	if err := d.WriteV(7, [][]byte{sector[:512], sector[512:]}); err != nil {
		log.Fatal(err)
	}
	got := make([]byte, d.SectorSize())
	if err := d.ReadV(7, [][]byte{got}); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("LBA 7 starts %q\n", got[:10])

	// Close flushes but leaves the medium open: the medium's owner, here the
	// deferred m.Close, ends the claim on the file.
	if err := d.Close(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// 7920 sectors of 4096 bytes
	// LBA 7 starts "hello, BTT"
}
