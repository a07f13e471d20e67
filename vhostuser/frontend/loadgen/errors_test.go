package loadgen_test

import (
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser/frontend/loadgen"
)

// halfFullDisk is a disk whose odd blocks cannot be written, as a host
// filesystem that ran out of space fails the writes that need new blocks.
type halfFullDisk struct {
	writes atomic.Uint64 // write requests that reached it
}

var errNoSpace = errors.New("no space left")

func (d *halfFullDisk) ReadV(uint64, [][]byte) error { return nil }
func (d *halfFullDisk) WriteV(lba uint64, _ [][]byte) error {
	d.writes.Add(1)
	if lba%2 == 1 {
		return errNoSpace
	}
	return nil
}
func (d *halfFullDisk) WriteZeroes(uint64, uint64) error { return nil }
func (d *halfFullDisk) Flush() error                     { return nil }
func (d *halfFullDisk) SectorSize() uint32               { return 4096 }
func (d *halfFullDisk) NumSectors() uint64               { return 1024 }
func (d *halfFullDisk) ReadOnly() bool                   { return false }

func serveHalfFull(t *testing.T) (string, *halfFullDisk) {
	t.Helper()
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	disk := &halfFullDisk{}
	_, sock := vhosttest.Serve(t, disk, blk.Options{}, vhost.Options{Logger: lg})
	return sock, disk
}

// By default the first request the back-end fails ends the run with an
// error naming it.
func TestAFailedRequestEndsTheRun(t *testing.T) {
	sock, _ := serveHalfFull(t)
	c := loadgen.Config{Mode: loadgen.RandWrite, BlockSize: 4096, IODepth: 4, Requests: 500}
	_, err := newGenerator(t, sock, c).Run(0)
	if err == nil || !strings.Contains(err.Error(), "status 1") {
		t.Fatalf("Run err = %v, want the failed write's status", err)
	}
}

// With ContinueOnError the failed requests are counted apart and the run
// goes on to its end: every request is either completed or failed.
func TestContinueOnErrorCountsTheFailedRequests(t *testing.T) {
	sock, disk := serveHalfFull(t)
	c := loadgen.Config{Mode: loadgen.RandWrite, BlockSize: 4096, IODepth: 4, Requests: 500, ContinueOnError: true}
	r, err := newGenerator(t, sock, c).Run(0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors == 0 || r.Ops == 0 {
		t.Fatalf("%d completed, %d failed: want both kinds from a half-full disk", r.Ops, r.Errors)
	}
	if got := disk.writes.Load(); r.Ops+r.Errors > got {
		t.Fatalf("%d completed + %d failed, but only %d writes reached the disk", r.Ops, r.Errors, got)
	}
}
