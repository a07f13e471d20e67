package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/nbd"
	"github.com/nvblk/nvblk/pmem"
)

// A *btt.Device is an Export as it is.
var _ nbd.Export = (*btt.Device)(nil)

// Serving a BTT over NBD on a unix socket, and reading it back with the
// package's client; qemu-img would read it as
// nbd+unix:///vda?socket=<dir>/nbd.sock.
func ExampleServer() {
	dir, err := os.MkdirTemp("", "nbd-example")
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
	dev, err := btt.Open(m, btt.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()
	sector := make([]byte, dev.SectorSize())
	copy(sector, "hello over NBD")
	if err := dev.WriteV(3, [][]byte{sector}); err != nil {
		log.Fatal(err)
	}

	srv := nbd.NewServer(nbd.ServerOptions{})
	if err := srv.AddExport("vda", dev, nbd.ExportOptions{}); err != nil {
		log.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	c, err := nbd.Dial(context.Background(), "unix", sock, nbd.ClientOptions{Export: "vda"})
	if err != nil {
		log.Fatal(err)
	}
	info := c.Info()
	fmt.Printf("%d bytes in blocks of %d, multi-conn %v\n", info.Size, info.MinBlock, info.CanMultiConn)
	got := make([]byte, info.MinBlock)
	if _, err := c.ReadAt(got, 3*int64(info.MinBlock)); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("block 3 starts %q\n", got[:14])
	c.Close()

	// Close waits for the connections' requests in flight, then Serve
	// returns.
	srv.Close()
	fmt.Println(<-served)
	// Output:
	// 32440320 bytes in blocks of 4096, multi-conn true
	// block 3 starts "hello over NBD"
	// nbd: server closed
}

// Pushing a disk into a destination's export, as a migration source
// does: writes from a few goroutines share one connection, pipelined, and
// a Flush at the end makes them durable on the destination.
func ExampleDial() {
	dir, err := os.MkdirTemp("", "nbd-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	dst := &ramDisk{data: make([]byte, 1<<20)}
	srv := nbd.NewServer(nbd.ServerOptions{})
	if err := srv.AddExport("incoming", dst, nbd.ExportOptions{}); err != nil {
		log.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)

	src := bytes.Repeat([]byte("source disk "), (1<<20)/12+1)[:1<<20]
	c, err := nbd.Dial(context.Background(), "unix", sock, nbd.ClientOptions{Export: "incoming"})
	if err != nil {
		log.Fatal(err)
	}
	const piece = 64 << 10
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			for off := w * piece; off < len(src); off += 4 * piece {
				if _, err := c.WriteAt(src[off:off+piece], int64(off)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			log.Fatal(err)
		}
	}
	if err := c.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := c.Close(); err != nil {
		log.Fatal(err)
	}
	// After Close the server has let go of dst: its requests are done.
	srv.Close()
	fmt.Println("destination equals source:", bytes.Equal(dst.data, src), "flushes:", dst.flushes)
	// Output:
	// destination equals source: true flushes: 1
}

// ramDisk is an Export in memory, of 512-byte sectors: the few methods
// any block device needs to be served.
type ramDisk struct {
	data    []byte // disjoint requests only touch disjoint bytes
	flushes int
}

func (d *ramDisk) SectorSize() uint32 { return 512 }
func (d *ramDisk) NumSectors() uint64 { return uint64(len(d.data)) / 512 }

func (d *ramDisk) ReadV(lba uint64, iov [][]byte) error {
	off := lba * 512
	for _, b := range iov {
		off += uint64(copy(b, d.data[off:]))
	}
	return nil
}

func (d *ramDisk) WriteV(lba uint64, iov [][]byte) error {
	off := lba * 512
	for _, b := range iov {
		off += uint64(copy(d.data[off:], b))
	}
	return nil
}

func (d *ramDisk) WriteZeroes(lba, n uint64) error {
	clear(d.data[lba*512 : (lba+n)*512])
	return nil
}

func (d *ramDisk) Flush() error {
	d.flushes++
	return nil
}
