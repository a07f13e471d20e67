package blkserve_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// The wiring of `nvblk serve`, end to end: a BTT on a pmem file, served on
// a vhost-user socket, and a front-end (here the Go one, in production
// QEMU) writing a sector and reading it back.
func ExampleNew() {
	dir, err := os.MkdirTemp("", "blkserve-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	m, err := pmem.Open(filepath.Join(dir, "disk.img"), pmem.Options{Create: true, Size: 20 << 20})
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
	defer d.Close() // before m.Close: the BTT flushes through the mapping

	lg := logrus.New()
	lg.SetOutput(io.Discard)
	s, err := blkserve.New(d, m.Durability(), blkserve.Config{NumQueues: 1, Serial: "example",
		Server: vhost.Options{Logger: lg}})
	if err != nil {
		log.Fatal(err)
	}
	sock := filepath.Join(dir, "vhost.sock")
	l, err := vhostuser.Listen(sock)
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Server.Serve(l) }()

	fe, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		log.Fatal(err)
	}
	q := fe.Queues[0]
	sector := make([]byte, 4096) // one BTT sector: virtio sectors 8..15
	copy(sector, "hello, BTT")
	if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 8, Data: sector}, 5*time.Second); err != nil {
		log.Fatal(err)
	}
	back := make([]byte, 4096)
	if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: back}, 5*time.Second); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("read back %q\n", back[:10])
	fe.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Server.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("Serve returned:", <-served)
	// Output:
	// read back "hello, BTT"
	// Serve returned: vhost: server closed
}
