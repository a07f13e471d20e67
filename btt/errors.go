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
	// ErrMediaFault: touching the medium's mapping faulted (SIGBUS or
	// SIGSEGV): the image was truncated under the device, the filesystem
	// had no space for a page of a sparse image, or the memory is
	// poisoned. The I/O that hit it failed; the process did not.
	ErrMediaFault = errors.New("fault in the medium's mapping")
	// ErrBufferFault: touching the caller's io-vector faulted (guest
	// memory the front-end shrank or unmapped). The I/O failed and the
	// medium is as the I/O found it, apart from sectors an earlier part of
	// the same request wrote.
	ErrBufferFault = errors.New("fault in the caller's buffer")
	// ErrArenaFailed: an arena stopped taking writes because a write
	// failed after it began to commit (its flog entry), which leaves the
	// in-memory free list unsure of what is live. Reads go on; reopening
	// the device recovers the arena from the flog.
	ErrArenaFailed = errors.New("arena failed: writes refused until the device is reopened")
	// ErrNoLane: TryAcquireLane found no lane it may hand out.
	ErrNoLane = errors.New("no lane free")
)
