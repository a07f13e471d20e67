package btt

import "fmt"

// Lane is one lane held by a caller for many I/Os: a vhost queue's worker
// takes one (TryAcquireLane) when its queue starts and gives it back when
// the queue stops. Its I/O then takes no shared lock on the way in or out
// (Device's ReadV, WriteV and WriteZeroes take a lane from a pool per
// call), and two callers holding
// different lanes meet only on a map cache line they both write. A Lane is
// for one goroutine at a time.
type Lane struct {
	d *Device
	l *lane
	// helper copies part of large reads on a lane of its own, if
	// AddReadHelper gave it one.
	helper *readHelper
}

// AcquireLane takes a lane for the caller's exclusive use, waiting for one
// if all are in use. Close waits for every acquired lane to be released.
// It waits as long as it takes: a caller that must not block (a vhost
// queue starting under its session's lock) uses TryAcquireLane.
func (d *Device) AcquireLane() (*Lane, error) {
	l, err := d.acquire()
	if err != nil {
		return nil, err
	}
	d.laneMu.Lock()
	d.held++
	d.laneMu.Unlock()
	return &Lane{d: d, l: l}, nil
}

// TryAcquireLane is AcquireLane without the wait: it fails at once, with an
// error wrapping ErrNoLane, when no lane is free. It also keeps one lane
// back: it never hands out the last lane that no Lane holds, so that the
// Device's own ReadV, WriteV and WriteZeroes, which take a lane per call,
// always find one within a request's time. A device of n lanes thus gives
// at most n-1 to TryAcquireLane, and none when it has one.
func (d *Device) TryAcquireLane() (*Lane, error) {
	if d.closed.Load() {
		return nil, fmt.Errorf("btt: %w", ErrClosed)
	}
	d.laneMu.Lock()
	defer d.laneMu.Unlock()
	if d.held+1 >= cap(d.lanes) {
		return nil, fmt.Errorf("btt: %w: %d of the device's %d lanes are held, and the last is kept for I/O without a lane of its own",
			ErrNoLane, d.held, cap(d.lanes))
	}
	var l *lane
	select {
	case l = <-d.lanes:
	default:
		return nil, fmt.Errorf("btt: %w: every lane is in use", ErrNoLane)
	}
	if d.closed.Load() { // as in acquire
		d.lanes <- l
		return nil, fmt.Errorf("btt: %w", ErrClosed)
	}
	d.held++
	return &Lane{d: d, l: l}, nil
}

// Release gives the lane back. The Lane must not be used afterwards.
func (ln *Lane) Release() {
	if ln.helper != nil {
		ln.helper.close()
		ln.helper = nil
	}
	if ln.l != nil {
		ln.d.laneMu.Lock()
		ln.d.held--
		ln.d.laneMu.Unlock()
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
	if ln.helper != nil && n*uint64(ln.d.sector) >= splitMinBytes {
		return ln.helper.read(ln.l, lba, n, iov, ln.d.sector)
	}
	return ln.d.readOn(ln.l, lba, n, iov, 0)
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

// WriteZeroes is Device.WriteZeroes on this lane.
func (ln *Lane) WriteZeroes(lba, n uint64) error {
	if ln.l == nil {
		return fmt.Errorf("btt: %w: lane released", ErrClosed)
	}
	if ln.d.readOnly {
		return fmt.Errorf("btt: %w", ErrReadOnly)
	}
	if err := ln.d.checkRange(lba, n); err != nil {
		return err
	}
	return ln.d.zeroOn(lba, n)
}

// Flush is Device.Flush.
func (ln *Lane) Flush() error { return ln.d.Flush() }

// SectorSize is Device.SectorSize.
func (ln *Lane) SectorSize() uint32 { return ln.d.SectorSize() }

// NumSectors is Device.NumSectors.
func (ln *Lane) NumSectors() uint64 { return ln.d.NumSectors() }

// ReadOnly is Device.ReadOnly.
func (ln *Lane) ReadOnly() bool { return ln.d.ReadOnly() }
