package frontend

import (
	"errors"
	"fmt"

	"github.com/nvblk/nvblk/vhostuser"
	"golang.org/x/sys/unix"
)

// ErrNoSpace is returned when guest memory is exhausted.
var ErrNoSpace = errors.New("frontend: guest memory exhausted")

// Region is one guest memory region: Size bytes of the memfd at Offset,
// seen by the guest at GuestAddr.
type Region struct {
	GuestAddr uint64
	Size      uint64
	Offset    uint64
}

// Memory is the "guest RAM" a front-end shares: one memfd, mapped once here,
// cut into regions with distinct guest addresses (so back-end translation
// across regions is exercised). Not safe for concurrent Alloc.
type Memory struct {
	fd      int
	mapping []byte
	Regions []Region
	next    []uint64 // per region: bump-allocation offset
}

// regionGap separates the guest addresses of consecutive regions, so a
// back-end that confused guest addresses with offsets would notice.
const regionGap = 1 << 32

// guestBase is region 0's guest address: non-zero for the same reason.
const guestBase = 0x10000

// NewMemory creates size bytes of shared memory in n equal regions (size
// must split into page multiples).
func NewMemory(size uint64, n int) (*Memory, error) {
	return newMemory(size, n, guestBase, regionGap)
}

// NewAdjacentMemory creates size bytes of shared memory in n equal regions
// back to back in guest-physical space from guestAddr, as hot-plugged DIMMs
// lie: each is still its own region (its own back-end mapping), so a
// buffer can start in one and end in the next. Slice serves such buffers.
// guestAddr must be page aligned and the regions must not overlap another
// Memory's the back-end is given.
func NewAdjacentMemory(size uint64, n int, guestAddr uint64) (*Memory, error) {
	if guestAddr%uint64(unix.Getpagesize()) != 0 {
		return nil, fmt.Errorf("frontend: guest address %#x not page aligned", guestAddr)
	}
	return newMemory(size, n, guestAddr, size/uint64(max(n, 1)))
}

// newMemory lays region i out at guest address base+i*stride.
func newMemory(size uint64, n int, base, stride uint64) (*Memory, error) {
	page := uint64(unix.Getpagesize())
	if n < 1 || n > vhostuser.MaxMemRegions || size == 0 || size%(uint64(n)*page) != 0 {
		return nil, fmt.Errorf("frontend: memory of %d bytes in %d regions", size, n)
	}
	fd, mapping, err := newMemfd(size)
	if err != nil {
		return nil, fmt.Errorf("frontend: guest memory: %w", err)
	}
	m := &Memory{fd: fd, mapping: mapping, next: make([]uint64, n)}
	per := size / uint64(n)
	for i := 0; i < n; i++ {
		m.Regions = append(m.Regions, Region{GuestAddr: base + uint64(i)*stride, Size: per, Offset: uint64(i) * per})
	}
	return m, nil
}

// FD is the memfd; it stays owned by Memory.
func (m *Memory) FD() int { return m.fd }

// Close unmaps the memory and closes the memfd.
func (m *Memory) Close() error {
	err := unmap(m.mapping)
	if cerr := unix.Close(m.fd); err == nil {
		err = cerr
	}
	return err
}

// VhostRegion describes region i for SET_MEM_TABLE / ADD_MEM_REG.
func (m *Memory) VhostRegion(i int) vhostuser.MemRegion {
	r := m.Regions[i]
	return vhostuser.MemRegion{
		GuestAddr:  r.GuestAddr,
		Size:       r.Size,
		UserAddr:   hostAddr(m.mapping[r.Offset:]),
		MmapOffset: r.Offset,
	}
}

// VhostRegions describes every region.
func (m *Memory) VhostRegions() []vhostuser.MemRegion {
	out := make([]vhostuser.MemRegion, len(m.Regions))
	for i := range m.Regions {
		out[i] = m.VhostRegion(i)
	}
	return out
}

// Slice returns n bytes at guest address gpa, or an error if they are not
// inside one region or a run of regions adjacent both in guest address and
// in the memfd (NewAdjacentMemory's), which are contiguous in our mapping.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	for i, r := range m.Regions {
		if gpa < r.GuestAddr || gpa-r.GuestAddr > r.Size {
			continue
		}
		end := r.GuestAddr + r.Size
		for j := i; n > end-gpa && j+1 < len(m.Regions); j++ {
			next := m.Regions[j+1]
			if next.GuestAddr != end || next.Offset != m.Regions[j].Offset+m.Regions[j].Size {
				break
			}
			end += next.Size
		}
		if n <= end-gpa {
			off := r.Offset + gpa - r.GuestAddr
			return m.mapping[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("frontend: guest address %#x+%#x outside memory", gpa, n)
}

// UserAddr is the front-end virtual address of guest address gpa.
func (m *Memory) UserAddr(gpa uint64) (uint64, error) {
	b, err := m.Slice(gpa, 1)
	if err != nil {
		return 0, err
	}
	return hostAddr(b), nil
}

// Alloc reserves n bytes aligned to align (a power of two) in the first
// region with room, zeroed, and returns the guest address and window.
func (m *Memory) Alloc(n, align uint64) (uint64, []byte, error) {
	for i := range m.Regions {
		if gpa, b, ok := m.allocIn(i, n, align); ok {
			return gpa, b, nil
		}
	}
	return 0, nil, fmt.Errorf("%w: %d bytes", ErrNoSpace, n)
}

// AllocIn is Alloc in region i only.
func (m *Memory) AllocIn(i int, n, align uint64) (uint64, []byte, error) {
	if i < 0 || i >= len(m.Regions) {
		return 0, nil, fmt.Errorf("frontend: no memory region %d of %d", i, len(m.Regions))
	}
	if gpa, b, ok := m.allocIn(i, n, align); ok {
		return gpa, b, nil
	}
	return 0, nil, fmt.Errorf("%w: %d bytes in region %d", ErrNoSpace, n, i)
}

func (m *Memory) allocIn(i int, n, align uint64) (uint64, []byte, bool) {
	r := m.Regions[i]
	off := (m.next[i] + align - 1) &^ (align - 1)
	if off+n > r.Size {
		return 0, nil, false
	}
	m.next[i] = off + n
	b, _ := m.Slice(r.GuestAddr+off, n)
	clear(b)
	return r.GuestAddr + off, b, true
}
