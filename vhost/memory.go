package vhost

import (
	"errors"
	"fmt"
	"sort"

	"github.com/nvblk/nvblk/vhostuser"
)

// Errors of the guest memory table.
var (
	// ErrBadRegion: a memory region that is empty, wraps, overlaps another
	// or does not fit its file.
	ErrBadRegion = errors.New("vhost: bad memory region")
	// ErrBadAddress: an address range not inside one mapped region.
	ErrBadAddress = errors.New("vhost: address not in guest memory")
	// ErrBadLog: a dirty log (SET_LOG_BASE) we cannot use (log.go).
	ErrBadLog = errors.New("vhost: bad dirty log")
)

// guestRegion is one mmapped region. It is shared between successive
// memTable snapshots (ADD_MEM_REG keeps the others) and unmapped exactly once,
// when the last table holding it is retired by the session.
type guestRegion struct {
	vhostuser.MemRegion
	mapping []byte // whole mmap, for munmap
	data    []byte // the region's Size bytes, starting at guest address GuestAddr
}

func newGuestRegion(r vhostuser.MemRegion, fd int) (*guestRegion, error) {
	if err := checkRange(r.GuestAddr, r.Size); err != nil {
		return nil, fmt.Errorf("%w: guest address %#x size %#x", ErrBadRegion, r.GuestAddr, r.Size)
	}
	if err := checkRange(r.UserAddr, r.Size); err != nil {
		return nil, fmt.Errorf("%w: user address %#x size %#x", ErrBadRegion, r.UserAddr, r.Size)
	}
	mapping, data, err := mapRegionFD(fd, r.MmapOffset, r.Size)
	if err != nil {
		return nil, err
	}
	return &guestRegion{MemRegion: r, mapping: mapping, data: data}, nil
}

func (g *guestRegion) unmap() error {
	err := unmapRegion(g.mapping)
	g.mapping, g.data = nil, nil
	return err
}

// checkRange rejects empty and wrapping ranges.
func checkRange(start, size uint64) error {
	if size == 0 || start+size < start || start+size-1 < start {
		return ErrBadRegion
	}
	return nil
}

// memTable is an immutable snapshot of guest memory. It implements
// virtq.Memory: workers translate through it without locks because the
// session stops every worker before it retires a table.
type memTable struct {
	regions []*guestRegion // sorted by GuestAddr, non-overlapping
	byHost  []*guestRegion // the same, sorted by the address of their mapping (hostToGuest)
}

// newMemTable sorts regions and checks that neither their guest nor their
// user ranges overlap.
func newMemTable(regions []*guestRegion) (*memTable, error) {
	rs := append([]*guestRegion(nil), regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GuestAddr < rs[j].GuestAddr })
	for i := 1; i < len(rs); i++ {
		if rs[i].GuestAddr <= rs[i-1].GuestAddr+rs[i-1].Size-1 {
			return nil, fmt.Errorf("%w: guest ranges %#x+%#x and %#x+%#x overlap",
				ErrBadRegion, rs[i-1].GuestAddr, rs[i-1].Size, rs[i].GuestAddr, rs[i].Size)
		}
	}
	byUser := append([]*guestRegion(nil), rs...)
	sort.Slice(byUser, func(i, j int) bool { return byUser[i].UserAddr < byUser[j].UserAddr })
	for i := 1; i < len(byUser); i++ {
		if byUser[i].UserAddr <= byUser[i-1].UserAddr+byUser[i-1].Size-1 {
			return nil, fmt.Errorf("%w: user ranges %#x+%#x and %#x+%#x overlap",
				ErrBadRegion, byUser[i-1].UserAddr, byUser[i-1].Size, byUser[i].UserAddr, byUser[i].Size)
		}
	}
	byHost := append([]*guestRegion(nil), rs...)
	sort.Slice(byHost, func(i, j int) bool { return hostAddr(byHost[i].data) < hostAddr(byHost[j].data) })
	return &memTable{regions: rs, byHost: byHost}, nil
}

// hostToGuest returns the guest-physical address of b, a window into one of
// the table's regions (a chain's segment), or false if it is none of theirs.
// Dirty logging (log.go) marks by guest address, and virtq's segments carry
// only the window; the lookup is paid only while logging.
func (t *memTable) hostToGuest(b []byte) (uint64, bool) {
	if t == nil || len(b) == 0 {
		return 0, false
	}
	p := hostAddr(b)
	i := sort.Search(len(t.byHost), func(i int) bool { return hostAddr(t.byHost[i].data) > p }) - 1
	if i < 0 {
		return 0, false
	}
	r := t.byHost[i]
	off := uint64(p - hostAddr(r.data))
	if off >= r.Size || uint64(len(b)) > r.Size-off {
		return 0, false
	}
	return r.GuestAddr + off, true
}

// end is the guest-physical address just past the highest region, 0
// without regions: what a dirty log has to cover.
func (t *memTable) end() uint64 {
	if t.len() == 0 {
		return 0
	}
	r := t.regions[len(t.regions)-1]
	return r.GuestAddr + r.Size // newGuestRegion refused a region that wraps
}

// Translate implements virtq.Memory: it returns the guest memory at
// guest-physical address gpa as a window into the shared mapping, n bytes
// or up to the end of gpa's region if that comes first (capacity limited
// to the window). Each region is mapped on its own, so a range that runs
// into the next region, even an adjacent one (hot-plugged DIMMs), is not
// contiguous here: virtq asks for the rest separately.
func (t *memTable) Translate(gpa, n uint64) ([]byte, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: no memory table", ErrBadAddress)
	}
	i := sort.Search(len(t.regions), func(i int) bool {
		r := t.regions[i]
		return r.GuestAddr+r.Size-1 >= gpa
	})
	if i < len(t.regions) {
		r := t.regions[i]
		if gpa >= r.GuestAddr {
			off := gpa - r.GuestAddr
			k := min(n, r.Size-off)
			return r.data[off : off+k : off+k], nil
		}
	}
	return nil, fmt.Errorf("%w: %#x+%#x", ErrBadAddress, gpa, n)
}

// userToGuest converts a front-end virtual address range (SET_VRING_ADDR) to
// the guest-physical address of its start; the range must lie in one region.
func (t *memTable) userToGuest(uva, n uint64) (uint64, error) {
	if t != nil {
		for _, r := range t.regions {
			if uva >= r.UserAddr && uva-r.UserAddr < r.Size && n <= r.Size-(uva-r.UserAddr) {
				return r.GuestAddr + (uva - r.UserAddr), nil
			}
		}
	}
	return 0, fmt.Errorf("%w: user address %#x+%#x", ErrBadAddress, uva, n)
}

// find returns the index of the region equal to r in guest address, user
// address and size (REM_MEM_REG ignores the mmap offset), or -1.
func (t *memTable) find(r vhostuser.MemRegion) int {
	if t == nil {
		return -1
	}
	for i, g := range t.regions {
		if g.GuestAddr == r.GuestAddr && g.UserAddr == r.UserAddr && g.Size == r.Size {
			return i
		}
	}
	return -1
}

func (t *memTable) len() int {
	if t == nil {
		return 0
	}
	return len(t.regions)
}
