//go:build linux

package pmem

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// probeKindAndSize says what fd is and how many bytes of it can be mapped.
func probeKindAndSize(path string, fd int, st *unix.Stat_t) (Kind, int64, error) {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return KindFile, st.Size, nil
	case unix.S_IFBLK:
		// st_size is 0 for device nodes; seeking to the end asks the driver.
		size, err := unix.Seek(fd, 0, 2 /* SEEK_END */)
		if err != nil {
			return 0, 0, fmt.Errorf("pmem: %s: size of block device: %w", path, err)
		}
		return KindBlockDevice, size, nil
	case unix.S_IFCHR:
		size, err := devDAXSize(uint64(st.Rdev))
		if err != nil {
			return 0, 0, fmt.Errorf("pmem: %s: %w", path, err)
		}
		return KindDevDAX, size, nil
	}
	return 0, 0, fmt.Errorf("pmem: %s: mode %#o: %w", path, st.Mode&unix.S_IFMT, ErrUnsupportedMedium)
}

// devDAXSize reads a devdax device's size from sysfs, refusing character devices of any other
// subsystem: mapping /dev/mem or a tty as a BTT would be a disaster.
func devDAXSize(rdev uint64) (int64, error) {
	dir := fmt.Sprintf("/sys/dev/char/%d:%d", unix.Major(rdev), unix.Minor(rdev))
	subsystem, err := os.Readlink(filepath.Join(dir, "subsystem"))
	if err != nil {
		return 0, fmt.Errorf("character device %d:%d: %v: %w", unix.Major(rdev), unix.Minor(rdev), err, ErrUnsupportedMedium)
	}
	if filepath.Base(subsystem) != "dax" {
		return 0, fmt.Errorf("character device of subsystem %q: %w", filepath.Base(subsystem), ErrUnsupportedMedium)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "size"))
	if err != nil {
		return 0, fmt.Errorf("devdax size: %w", err)
	}
	size, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("devdax size %q in %s: %w", strings.TrimSpace(string(raw)), dir, err)
	}
	if size < 0 {
		return 0, errors.New("devdax size is negative")
	}
	return size, nil
}
