package pmem

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// DefaultProcessLogDir is where process logs live unless Options.ProcessLogDir says
// otherwise: Debian mounts tmpfs there, and every process may create files in it. Where it is
// missing (a minimal initramfs, some containers) the log goes to os.TempDir(): the boot stamp,
// not the file system, is what keeps a log from outliving the page cache it describes.
const DefaultProcessLogDir = "/dev/shm"

// processLogDir is dir, or the default as above.
func processLogDir(dir string) string {
	if dir != "" {
		return dir
	}
	if st, err := os.Stat(DefaultProcessLogDir); err == nil && st.IsDir() {
		return DefaultProcessLogDir
	}
	return os.TempDir()
}

// ErrProcessLog wraps a process log file that cannot be trusted or made.
var ErrProcessLog = errors.New("process log unusable")

// processLog is a medium's process log: a small file, named after the medium and stamped with
// the boot it was written in, mapped shared. A page-cache medium's stores survive a crash of
// the process (they are in the page cache) but not of the machine, and so does this file: on
// tmpfs it is gone after a reboot, and anywhere else a stamp from another boot makes it blank. Package btt keeps the writes it has not committed there (see
// btt.ProcessLogMedium).
//
// The file's first page is the stamp, little-endian:
//
//	 0  [8]  magic "NVBLKPRL"
//	 8  [36] the kernel's boot id (/proc/sys/kernel/random/boot_id)
//	48  u64  st_dev of the medium (st_rdev for a device)
//	56  u64  st_ino of the medium (0 for a device)
//	64  u64  the region's length in bytes
//
// and the region follows from byte 4096 on.
type processLog struct {
	mu   sync.Mutex // guards all below
	dir  string
	path string
	data []byte // the whole mapping, stamp page included; nil when not mapped
	// retired are the mappings a larger ProcessLog replaced: the caller may
	// still hold regions in them (the same file pages as the new one's
	// start), so they stay mapped until Close or DropProcessLog.
	retired [][]byte
}

const (
	processLogMagic = "NVBLKPRL"
	processLogStamp = 4096
	bootIDLen       = 36
)

// bootID is the kernel's id of this boot; a variable so tests can move to another boot.
var bootID = func() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	id := string(bytes.TrimSpace(b))
	if len(id) != bootIDLen {
		return "", fmt.Errorf("boot id %q is not %d characters", id, bootIDLen)
	}
	return id, nil
}

func (m *Medium) processLogStamp(boot string, n int) []byte {
	h := make([]byte, 72)
	copy(h, processLogMagic)
	copy(h[8:], boot)
	binary.LittleEndian.PutUint64(h[48:], m.ident[0])
	binary.LittleEndian.PutUint64(h[56:], m.ident[1])
	binary.LittleEndian.PutUint64(h[64:], uint64(n))
	return h
}

// ProcessLogPath is the file ProcessLog keeps for this medium.
func (m *Medium) ProcessLogPath() string {
	return filepath.Join(m.processLog.dir, fmt.Sprintf("nvblk-%x-%x.plog", m.ident[0], m.ident[1]))
}

// ProcessLog returns a region of n bytes, page aligned, that outlives this process but not
// the machine: as an earlier process with this medium left it in this boot, else zeroes. It
// is the same region for the Medium's life, until DropProcessLog. The file must belong to
// this user and be private to it; one that is not is refused, not trusted.
func (m *Medium) ProcessLog(n int) ([]byte, error) {
	if n <= 0 || n > 64<<20 {
		return nil, fmt.Errorf("pmem: %s: process log of %d bytes: %w", m.path, n, ErrInvalidOptions)
	}
	pl := &m.processLog
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.data != nil {
		if have := len(pl.data) - processLogStamp; have < n {
			// Larger, as for a device that grew: the same file, longer,
			// its first bytes kept (regions the caller holds in the old
			// mapping see the same pages).
			data, err := m.growProcessLog(pl.data, n)
			if err != nil {
				return nil, fmt.Errorf("pmem: %s: process log %s: growing to %d bytes: %w", m.path, pl.path, n, err)
			}
			pl.retired = append(pl.retired, pl.data)
			pl.data = data
		}
		return pl.data[processLogStamp : processLogStamp+n : processLogStamp+n], nil
	}
	path := m.ProcessLogPath()
	data, err := m.mapProcessLog(path, n)
	if err != nil {
		return nil, fmt.Errorf("pmem: %s: process log %s: %w", m.path, path, err)
	}
	pl.path, pl.data = path, data
	return data[processLogStamp : processLogStamp+n : processLogStamp+n], nil
}

func (m *Medium) mapProcessLog(path string, n int) ([]byte, error) {
	boot, err := bootID()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	// The mapping outlives the descriptor; nothing else needs it.
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat: %w", err)
	}
	// The directory is shared by every user: a file someone else made, or can write, could
	// hand this process writes it never made.
	if st.Mode&unix.S_IFMT != unix.S_IFREG || int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		return nil, fmt.Errorf("%w: not a regular file of mode 0600 owned by uid %d (mode %o, uid %d)", ErrProcessLog, os.Geteuid(), st.Mode, st.Uid)
	}
	size := processLogFileSize(n)
	want := m.processLogStamp(boot, n)
	stamp := make([]byte, len(want))
	if st.Size == size {
		if _, err := unix.Pread(fd, stamp, 0); err != nil {
			return nil, fmt.Errorf("read stamp: %w", err)
		}
	}
	if !bytes.Equal(stamp, want) {
		// Another boot's, another medium's, another size's, or new: start blank.
		if err := unix.Ftruncate(fd, 0); err != nil {
			return nil, fmt.Errorf("truncate: %w", err)
		}
		if err := unix.Ftruncate(fd, size); err != nil {
			return nil, fmt.Errorf("size to %d bytes: %w", size, err)
		}
		if _, err := unix.Pwrite(fd, want, 0); err != nil {
			return nil, fmt.Errorf("write stamp: %w", err)
		}
	}
	data, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	return data, nil
}

// growProcessLog extends the mapped log file to hold n bytes and maps it whole again.
func (m *Medium) growProcessLog(old []byte, n int) ([]byte, error) {
	boot, err := bootID()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(m.processLog.path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	size := processLogFileSize(n)
	if err := unix.Ftruncate(fd, size); err != nil {
		return nil, fmt.Errorf("size to %d bytes: %w", size, err)
	}
	data, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	copy(data, m.processLogStamp(boot, n))
	return data, nil
}

// processLogFileSize is the file holding a region of n bytes: the stamp
// page, then the region in whole pages.
func processLogFileSize(n int) int64 {
	page := int64(unix.Getpagesize())
	return processLogStamp + (int64(n)+page-1)/page*page
}

// DropProcessLog unmaps the process log and removes its file: the caller closed cleanly and
// the log holds nothing a later process needs.
func (m *Medium) DropProcessLog() error {
	pl := &m.processLog
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.data == nil {
		return nil
	}
	err := pl.unmapLocked()
	if rerr := os.Remove(pl.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return fmt.Errorf("pmem: %s: drop process log: %w", m.path, err)
	}
	return nil
}

// unmap unmaps the log and keeps its file, for Close.
func (pl *processLog) unmap() error {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.unmapLocked()
}

func (pl *processLog) unmapLocked() error {
	var errs []error
	for _, b := range append(pl.retired, pl.data) {
		if b != nil {
			if err := unix.Munmap(b); err != nil {
				errs = append(errs, err)
			}
		}
	}
	pl.data, pl.retired = nil, nil
	return errors.Join(errs...)
}
