package blk

import (
	"errors"
	"fmt"
)

var errInjected = errors.New("injected disk error")

// fakeDisk is an in-memory Disk. It checks the contract the Handler must
// honour (in-range, whole-sector requests) and fails loudly otherwise.
type fakeDisk struct {
	sector  uint32
	data    []byte
	ro      bool
	failAll bool // every operation returns errInjected

	flushes int
	zeroes  [][2]uint64 // (lba, n) per WriteZeroes
	// First bytes of the last ReadV/WriteV iov (the Handler clears its iov
	// afterwards, so the windows themselves are not kept).
	lastIOV  [4]*byte
	lastN    int
	contract error // first contract violation seen
}

func newFakeDisk(sector uint32, sectors int) *fakeDisk {
	return &fakeDisk{sector: sector, data: make([]byte, int(sector)*sectors)}
}

func (d *fakeDisk) SectorSize() uint32 { return d.sector }
func (d *fakeDisk) NumSectors() uint64 { return uint64(len(d.data)) / uint64(d.sector) }
func (d *fakeDisk) ReadOnly() bool     { return d.ro }

func (d *fakeDisk) Flush() error {
	d.flushes++
	if d.failAll {
		return errInjected
	}
	return nil
}

// span validates a request and returns its byte range.
func (d *fakeDisk) span(lba, n uint64) (int, int, error) {
	if lba > d.NumSectors() || n > d.NumSectors()-lba {
		if d.contract == nil {
			d.contract = fmt.Errorf("out of range: lba %d n %d of %d", lba, n, d.NumSectors())
		}
		return 0, 0, errors.New("out of range")
	}
	return int(lba) * int(d.sector), int(lba+n) * int(d.sector), nil
}

func (d *fakeDisk) iovLen(iov [][]byte) uint64 {
	var n uint64
	for _, b := range iov {
		n += uint64(len(b))
	}
	if n%uint64(d.sector) != 0 && d.contract == nil {
		d.contract = fmt.Errorf("iov of %d bytes is not whole sectors", n)
	}
	return n / uint64(d.sector)
}

func (d *fakeDisk) ReadV(lba uint64, iov [][]byte) error {
	d.record(iov)
	from, to, err := d.span(lba, d.iovLen(iov))
	if err != nil {
		return err
	}
	if d.failAll {
		return errInjected
	}
	src := d.data[from:to]
	for _, b := range iov {
		src = src[copy(b, src):]
	}
	return nil
}

func (d *fakeDisk) WriteV(lba uint64, iov [][]byte) error {
	d.record(iov)
	if d.ro && d.contract == nil {
		d.contract = errors.New("write to read-only disk")
	}
	from, to, err := d.span(lba, d.iovLen(iov))
	if err != nil {
		return err
	}
	if d.failAll {
		return errInjected
	}
	dst := d.data[from:to]
	for _, b := range iov {
		dst = dst[copy(dst, b):]
	}
	return nil
}

func (d *fakeDisk) WriteZeroes(lba, n uint64) error {
	if d.ro && d.contract == nil {
		d.contract = errors.New("zeroing a read-only disk")
	}
	from, to, err := d.span(lba, n)
	if err != nil {
		return err
	}
	d.zeroes = append(d.zeroes, [2]uint64{lba, n})
	if d.failAll {
		return errInjected
	}
	clear(d.data[from:to])
	return nil
}

func (d *fakeDisk) record(iov [][]byte) {
	d.lastN = len(iov)
	for i := range min(len(iov), len(d.lastIOV)) {
		d.lastIOV[i] = &iov[i][0]
	}
}
