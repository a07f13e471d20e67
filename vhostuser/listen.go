package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocketMode is the listening socket's mode unless the owner widens it
// (ListenMode, `nvblk serve --socket-mode`): whoever can connect can read and
// write the disk, so by default only the owner may.
const DefaultSocketMode fs.FileMode = 0o600

// ErrPathTooLong is returned for a socket path longer than a unix socket
// address holds.
var ErrPathTooLong = errors.New("vhostuser: socket path too long")

// maxSocketPath is the longest path a unix socket can be bound to: sun_path
// less its terminating NUL.
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path) - 1

// Listen creates a unix socket at path with DefaultSocketMode. A socket file
// left by a dead process is removed; one with a live listener, a symlink, or
// any other kind of file at path is refused.
func Listen(path string) (*net.UnixListener, error) {
	return ListenMode(path, DefaultSocketMode)
}

// ListenMode is Listen with the socket file's permission bits set to mode
// (only the 0777 bits are used). The socket is never, not even for an
// instant, more accessible than mode.
func ListenMode(path string, mode fs.FileMode) (*net.UnixListener, error) {
	return ListenModeGroup(path, mode, -1)
}

// ListenModeGroup is ListenMode with the socket file given the group gid
// (gid < 0: the creator's, as ListenMode). The group bits of mode apply
// only once the file has that group: never, not even for an instant, to
// the creator's group. Giving a group the process is not a member of
// takes root (CAP_CHOWN).
func ListenModeGroup(path string, mode fs.FileMode, gid int) (*net.UnixListener, error) {
	mode &= fs.ModePerm
	fi, err := os.Lstat(path)
	switch {
	case len(path) > maxSocketPath:
		// bind would say only "invalid argument".
		return nil, fmt.Errorf("%w: listen %s: the path is %d bytes; a unix socket's holds at most %d", ErrPathTooLong, path, len(path), maxSocketPath)
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("vhostuser: listen %s: %w", path, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return nil, fmt.Errorf("vhostuser: listen %s: refusing a symlink", path)
	case fi.Mode()&fs.ModeSocket == 0:
		return nil, fmt.Errorf("vhostuser: listen %s: exists and is not a socket", path)
	default:
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("vhostuser: listen %s: %w", path, syscall.EADDRINUSE)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("vhostuser: listen %s: probing existing socket: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("vhostuser: listen %s: removing stale socket: %w", path, err)
		}
	}
	// Linux creates the socket file with the socket inode's mode minus the
	// umask, so setting the mode before bind leaves no window in which the
	// file is wider than asked (a chmod after bind would). The file's group
	// is the creator's whatever the socket inode's, so with another group
	// asked for the group bits wait until the chown.
	bindMode := mode
	if gid >= 0 {
		bindMode &^= 0o070
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) { err = unix.Fchmod(int(fd), uint32(bindMode)) }); cerr != nil {
			return cerr
		}
		return err
	}}
	nl, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, fmt.Errorf("vhostuser: listen %s: %w", path, err)
	}
	l := nl.(*net.UnixListener)
	if err := finishSocket(path, mode, gid); err != nil {
		l.Close()
		return nil, fmt.Errorf("vhostuser: listen %s: %w", path, err)
	}
	return l, nil
}

// finishSocket gives the socket file at path the group gid (if >= 0), then
// exactly mode when the umask or bind took bits away. It goes through an
// O_PATH descriptor opened without following symlinks, so a path swapped
// for a symlink meanwhile is never chowned or chmodded.
func finishSocket(path string, mode fs.FileMode, gid int) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket mode: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("socket mode: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("socket mode: %s is no longer our socket", path)
	}
	if gid >= 0 && int(st.Gid) != gid {
		// AT_EMPTY_PATH changes the O_PATH descriptor's inode itself.
		if err := unix.Fchownat(fd, "", -1, gid, unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("socket group %d: %w", gid, err)
		}
	}
	if fs.FileMode(st.Mode)&fs.ModePerm == mode {
		return nil
	}
	// chmod of the O_PATH descriptor's /proc link changes that inode only.
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), uint32(mode)); err != nil {
		return fmt.Errorf("socket mode %#o: %w", mode, err)
	}
	return nil
}
