package btt

import "errors"

// Sentinel errors, for errors.Is.
var (
	// ErrNotFound: the medium holds no BTT info block.
	ErrNotFound = errors.New("btt: no BTT found")
	// ErrCorrupt: BTT metadata is inconsistent.
	ErrCorrupt = errors.New("btt: metadata corrupt")
	// ErrOutOfRange: an LBA range past the device's capacity.
	ErrOutOfRange = errors.New("btt: LBA out of range")
	// ErrMisaligned: a buffer length that is not a whole number of sectors.
	ErrMisaligned = errors.New("btt: length not a multiple of the sector size")
	// ErrReadOnly: a write to a device opened read-only, or forced read-only
	// by an arena's error flag.
	ErrReadOnly = errors.New("btt: device is read-only")
	// ErrMediaError: a sector whose map entry carries the error flag.
	ErrMediaError = errors.New("btt: media error")
	// ErrClosed: I/O on a closed device.
	ErrClosed = errors.New("btt: device closed")
	// ErrInvalidArgument: a bad format or open option.
	ErrInvalidArgument = errors.New("btt: invalid argument")
)
