package nbd

import (
	"errors"
	"fmt"
	"syscall"
)

// Sentinel errors, for errors.Is.
var (
	// ErrServerClosed: Serve or ServeConn after (or ended by) Close.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrClosed: a Client used after Close.
	ErrClosed = errors.New("nbd: client closed")
	// ErrUnknownExport: the server has no export of the name asked for.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrProtocol: the peer broke the protocol (bad magic, a reply to a
	// request never sent, a message of the wrong size); the connection is
	// dropped.
	ErrProtocol = errors.New("nbd: protocol violation")
	// ErrUnaligned: a client request whose offset or length is not a
	// multiple of the export's minimum block size.
	ErrUnaligned = errors.New("nbd: request not aligned to the minimum block size")
	// ErrOutOfRange: a client request past the end of the export.
	ErrOutOfRange = errors.New("nbd: request past the end of the export")
	// ErrNotSupported: the server did not advertise the operation.
	ErrNotSupported = errors.New("nbd: operation not supported by the export")
	// ErrOptionRefused: the server answered an option with an error
	// reply; the error says which.
	ErrOptionRefused = errors.New("nbd: option refused")
)

// RemoteError is a request the server failed: Errno is the reply's error
// value. errors.Is matches it against the syscall.Errno of the same name
// (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN).
type RemoteError struct {
	Errno uint32
}

func (e *RemoteError) Error() string {
	if se, ok := errnoSyscall(e.Errno); ok {
		return fmt.Sprintf("nbd: server replied %v", se)
	}
	return fmt.Sprintf("nbd: server replied error %d", e.Errno)
}

// Is makes errors.Is(err, syscall.ENOSPC) work on a RemoteError.
func (e *RemoteError) Is(target error) bool {
	se, ok := errnoSyscall(e.Errno)
	return ok && target == se
}

// errnoSyscall maps the spec's error values to this platform's errno:
// the spec's numbers are Linux's, but only by convention.
func errnoSyscall(v uint32) (syscall.Errno, bool) {
	switch v {
	case errnoPerm:
		return syscall.EPERM, true
	case errnoIO:
		return syscall.EIO, true
	case errnoNoMem:
		return syscall.ENOMEM, true
	case errnoInval:
		return syscall.EINVAL, true
	case errnoNoSpace:
		return syscall.ENOSPC, true
	case errnoOverflow:
		return syscall.EOVERFLOW, true
	case errnoNotSup:
		return syscall.ENOTSUP, true
	case errnoShutdown:
		return syscall.ESHUTDOWN, true
	}
	return 0, false
}

// errnoOf turns an export's error into the reply's error value: the ones
// a client can act on by their errno (a full medium, a read-only one, a
// bad argument), everything else EIO.
func errnoOf(err error) uint32 {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errnoNoSpace // as the spec asks for EDQUOT and EFBIG
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES):
		return errnoPerm
	case errors.Is(err, syscall.EINVAL):
		return errnoInval
	}
	return errnoIO
}
