package btt

import "errors"

// Sentinel errors, for errors.Is. They carry no "btt: " prefix: every error
// an exported function of this package returns begins with "btt: " exactly
// once, added where the error leaves the package, so a sentinel wrapped
// with its context (the LBA, the arena) does not repeat it.
var (
	// ErrNotFound: the medium holds no BTT info block.
	ErrNotFound = errors.New("no BTT found")
	// ErrCorrupt: BTT metadata is inconsistent.
	ErrCorrupt = errors.New("metadata corrupt")
	// ErrOutOfRange: an LBA range past the device's capacity.
	ErrOutOfRange = errors.New("LBA out of range")
	// ErrMisaligned: a buffer length that is not a whole number of sectors.
	ErrMisaligned = errors.New("length not a multiple of the sector size")
	// ErrReadOnly: a write to a device opened read-only, or forced read-only
	// by an arena's error flag.
	ErrReadOnly = errors.New("device is read-only")
	// ErrMediaError: a sector whose map entry carries the error flag.
	ErrMediaError = errors.New("media error")
	// ErrClosed: I/O on a closed device.
	ErrClosed = errors.New("device closed")
	// ErrInvalidArgument: a bad format or open option.
	ErrInvalidArgument = errors.New("invalid argument")
)
