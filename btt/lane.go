package btt

import "fmt"

// Lane is one lane held by a caller for many I/Os: a vhost queue's worker
// takes one when its queue starts and gives it back when the queue stops.
// Its I/O then takes no shared lock on the way in or out (Device's ReadV and
// WriteV take a lane from a pool per call), and two callers holding
// different lanes meet only on a map cache line they both write. A Lane is
// for one goroutine at a time.
type Lane struct {
	d *Device
	l *lane
}

// AcquireLane takes a lane for the caller's exclusive use, waiting for one
// if all are in use. Close waits for every acquired lane to be released.
func (d *Device) AcquireLane() (*Lane, error) {
	l, err := d.acquire()
	if err != nil {
		return nil, err
	}
	return &Lane{d: d, l: l}, nil
}

// Release gives the lane back. The Lane must not be used afterwards.
func (ln *Lane) Release() {
	if ln.l != nil {
		ln.d.release(ln.l)
		ln.l = nil
	}
}

// ReadV is Device.ReadV on this lane.
func (ln *Lane) ReadV(lba uint64, iov [][]byte) error {
	n, err := ln.check(lba, iov)
	if err != nil {
		return err
	}
	return ln.d.readOn(ln.l, lba, n, iov)
}

// WriteV is Device.WriteV on this lane.
func (ln *Lane) WriteV(lba uint64, iov [][]byte) error {
	if ln.d.readOnly {
		return fmt.Errorf("btt: %w", ErrReadOnly)
	}
	n, err := ln.check(lba, iov)
	if err != nil {
		return err
	}
	return ln.d.writeOn(ln.l, lba, n, iov)
}

func (ln *Lane) check(lba uint64, iov [][]byte) (uint64, error) {
	if ln.l == nil {
		return 0, fmt.Errorf("btt: %w: lane released", ErrClosed)
	}
	n, err := ln.d.sectorsIn(iov)
	if err != nil {
		return 0, err
	}
	return n, ln.d.checkRange(lba, n)
}

// WriteZeroes is Device.WriteZeroes (it needs no lane: map updates only).
func (ln *Lane) WriteZeroes(lba, n uint64) error { return ln.d.WriteZeroes(lba, n) }

// Flush is Device.Flush.
func (ln *Lane) Flush() error { return ln.d.Flush() }

// SectorSize is Device.SectorSize.
func (ln *Lane) SectorSize() uint32 { return ln.d.SectorSize() }

// NumSectors is Device.NumSectors.
func (ln *Lane) NumSectors() uint64 { return ln.d.NumSectors() }

// ReadOnly is Device.ReadOnly.
func (ln *Lane) ReadOnly() bool { return ln.d.ReadOnly() }
