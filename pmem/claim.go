//go:build linux

package pmem

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A claim is this process's hold on one backing inode: the descriptor the mapping and the
// fcntl record lock belong to.
//
// POSIX record locks do not conflict within one process, and closing any descriptor of an
// inode drops every lock the process holds on it. So the process keeps exactly one descriptor
// per claimed inode, shares it among read-only opens, checks the registry before opening the
// path at all, and never closes a descriptor of a claimed inode until the claim ends.
type claim struct {
	id       fileID
	fd       int
	shared   bool  // read-only claim under F_RDLCK, joinable by other read-only opens
	holders  int   // Mediums sharing fd
	strayFDs []int // descriptors of this inode opened in a race with the claim; closing them early would drop its lock
}

type fileID struct{ dev, ino uint64 }

var (
	claimsMu sync.Mutex            // guards claims and every claim's fields
	claims   = map[fileID]*claim{} // the inodes this process has open as a Medium
)

func idOf(st *unix.Stat_t) fileID { return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)} }

// claimPath opens path (creating it if asked) and claims it for this process and against
// every other process, or says who holds it.
func claimPath(path string, opts Options) (*claim, error) {
	claimsMu.Lock()
	defer claimsMu.Unlock()

	var st unix.Stat_t
	statErr := unix.Stat(path, &st)
	switch {
	case statErr == nil:
		if c := claims[idOf(&st)]; c != nil {
			return joinOrRefuse(path, opts, c)
		}
	case errors.Is(statErr, unix.ENOENT) && opts.Create:
	default:
		return nil, fmt.Errorf("pmem: %s: %w", path, statErr)
	}

	flags := unix.O_CLOEXEC | unix.O_RDWR
	if opts.ReadOnly {
		flags = unix.O_CLOEXEC | unix.O_RDONLY
	}
	if statErr == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && !opts.ReadOnly {
		// The same exclusive open the kernel uses for a BTT's backing device: fails with
		// EBUSY while the device is mounted or claimed by md, dm or another O_EXCL opener.
		flags |= unix.O_EXCL
	}
	created := false
	var fd int
	var err error
	if statErr != nil {
		fd, err = unix.Open(path, flags|unix.O_CREAT|unix.O_EXCL, 0o600)
		created = err == nil
		if errors.Is(err, unix.EEXIST) {
			fd, err = unix.Open(path, flags, 0)
		}
	} else {
		fd, err = unix.Open(path, flags, 0)
	}
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("pmem: %s: block device in use (mounted, or held open exclusively by another program): %w", path, ErrBusy)
	}
	if err != nil {
		return nil, fmt.Errorf("pmem: %s: open: %w", path, err)
	}

	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pmem: %s: fstat: %w", path, err)
	}
	id := idOf(&st)
	if c := claims[id]; c != nil {
		// The path was renamed onto a claimed inode between stat and open.
		c.strayFDs = append(c.strayFDs, fd)
		return joinOrRefuse(path, opts, c)
	}

	if err := lockOrNameHolder(path, fd, opts.ReadOnly); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if created {
		if err := unix.Ftruncate(fd, opts.Size); err != nil {
			unix.Close(fd)
			os.Remove(path)
			return nil, fmt.Errorf("pmem: %s: size new medium to %d bytes: %w", path, opts.Size, err)
		}
		// The medium's own msyncs make its size durable, but not its name.
		if err := syncParentDir(path); err != nil {
			unix.Close(fd)
			os.Remove(path)
			return nil, fmt.Errorf("pmem: %s: make the new medium's directory entry durable: %w", path, err)
		}
	}
	c := &claim{id: id, fd: fd, shared: opts.ReadOnly, holders: 1}
	claims[id] = c
	return c, nil
}

func joinOrRefuse(path string, opts Options, c *claim) (*claim, error) {
	if opts.ReadOnly && c.shared {
		c.holders++
		return c, nil
	}
	how := "for writing"
	if c.shared {
		how = "read-only"
	}
	return nil, fmt.Errorf("pmem: %s: already open %s as an nvblk medium in this process (pid %d): %w",
		path, how, os.Getpid(), ErrBusy)
}

// lockOrNameHolder takes the whole-file record lock, shared for read-only opens, and on
// conflict asks the kernel which process holds it.
func lockOrNameHolder(path string, fd int, readOnly bool) error {
	want := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if readOnly {
		want.Type = unix.F_RDLCK
	}
	// The holder may release between our F_SETLK and F_GETLK; then try again.
	for range 3 {
		lk := want
		err := unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			return fmt.Errorf("pmem: %s: fcntl(F_SETLK): %w", path, err)
		}
		probe := want
		if err := unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &probe); err != nil {
			return fmt.Errorf("pmem: %s: claimed by another process, and fcntl(F_GETLK) could not name it: %v: %w", path, err, ErrBusy)
		}
		if probe.Type == unix.F_UNLCK {
			continue
		}
		return fmt.Errorf("pmem: %s: %s: %w", path, describeHolder(&probe), ErrBusy)
	}
	return fmt.Errorf("pmem: %s: %w: %w", path, errLockHolderReleased, ErrBusy)
}

// describeHolder names whoever holds the conflicting lock. nvblk locks the whole file, so a
// whole-file lock is taken to be nvblk's; QEMU's image locking uses open-file-description
// locks on single bytes, which the kernel reports with pid -1.
func describeHolder(lk *unix.Flock_t) string {
	how := "for writing"
	if lk.Type == unix.F_RDLCK {
		how = "read-only"
	}
	if lk.Pid <= 0 {
		return fmt.Sprintf("locked %s by an open file description lock on bytes %s (QEMU's image locking, or another program; pid unknown)",
			how, lockedBytes(lk))
	}
	prog := processName(int(lk.Pid))
	if lk.Start == 0 && lk.Len == 0 {
		return fmt.Sprintf("claimed %s by nvblk pid %d (%s)", how, lk.Pid, prog)
	}
	return fmt.Sprintf("locked %s by pid %d (%s) on bytes %s", how, lk.Pid, prog, lockedBytes(lk))
}

func lockedBytes(lk *unix.Flock_t) string {
	if lk.Len == 0 {
		return fmt.Sprintf("%d-EOF", lk.Start)
	}
	return fmt.Sprintf("%d-%d", lk.Start, lk.Start+lk.Len-1)
}

func processName(pid int) string {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return "command unknown"
	}
	return fmt.Sprintf("%q", strings.TrimSpace(string(comm)))
}

// releaseClaim drops one holder; the last one unlocks and closes the descriptor, and only
// then the stray ones, since closing any of them drops the lock.
func releaseClaim(c *claim) error {
	claimsMu.Lock()
	defer claimsMu.Unlock()
	c.holders--
	if c.holders > 0 {
		return nil
	}
	delete(claims, c.id)
	var errs []error
	unlock := unix.Flock_t{Type: unix.F_UNLCK}
	if err := unix.FcntlFlock(uintptr(c.fd), unix.F_SETLK, &unlock); err != nil {
		errs = append(errs, fmt.Errorf("unlock: %w", err))
	}
	if err := unix.Close(c.fd); err != nil {
		errs = append(errs, fmt.Errorf("close: %w", err))
	}
	for _, fd := range c.strayFDs {
		unix.Close(fd)
	}
	c.strayFDs = nil
	return errors.Join(errs...)
}

func syncParentDir(path string) error {
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}
