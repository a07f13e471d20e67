package frontend

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Descriptor and ring flags (virtio 1.2 §2.7).
const (
	DescFNext         = 1
	DescFWrite        = 2
	DescFIndirect     = 4
	availFNoInterrupt = 1
	usedFNoNotify     = 1
)

// Ring is the driver side of a split virtqueue laid out in guest memory,
// with its kick and call eventfds. Driver-owned fields (descriptors, avail
// ring, used_event) are written only by the goroutine using the Ring; the
// 16-bit indices shared with the device are accessed atomically.
//
// A packed Ring (Packed, packed.go) drives a packed virtqueue behind the
// same methods: AvailAddr and UsedAddr are then the driver and device
// event suppression areas.
type Ring struct {
	Size     uint16
	EventIdx bool
	// Guest-physical addresses of the three parts.
	DescAddr, AvailAddr, UsedAddr uint64
	// Kick and Call are eventfds owned by the Ring: we write Kick, the
	// device writes Call.
	Kick, Call int

	desc, avail, used []byte
	availIdx          uint16        // next avail.idx to publish (shadow, driver-owned)
	notified          uint16        // avail.idx at the last Notify
	lastUsed          uint16        // next used ring entry to read
	holdAvail         bool          // PushAvail leaves avail.idx alone (HoldAvail)
	packed            *packedDriver // nil for a split ring
}

// allocator reserves guest memory: Memory.Alloc, or AllocIn one region.
type allocator func(n, align uint64) (uint64, []byte, error)

func newRing(alloc allocator, size uint16, eventIdx, packed bool) (*Ring, error) {
	if size < 2 || size&(size-1) != 0 {
		return nil, fmt.Errorf("frontend: ring size %d", size)
	}
	n := uint64(size)
	r := &Ring{Size: size, EventIdx: eventIdx, Kick: -1, Call: -1}
	var err error
	if r.DescAddr, r.desc, err = alloc(16*n, 16); err != nil {
		return nil, err
	}
	availLen, usedLen := 6+2*n+2, 6+8*n+2
	if packed {
		// The event suppression areas: 4 bytes, 4-aligned (§2.8.10).
		availLen, usedLen = 4, 4
		r.packed = newPackedDriver(size)
	}
	// Two spare bytes after the avail and used rings keep the aligned
	// 32-bit words around used_event/avail_event inside guest memory.
	if r.AvailAddr, r.avail, err = alloc(availLen, 4); err != nil {
		return nil, err
	}
	if r.UsedAddr, r.used, err = alloc(usedLen, 4); err != nil {
		return nil, err
	}
	if r.Kick, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("frontend: eventfd: %w", err)
	}
	if r.Call, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		unix.Close(r.Kick)
		return nil, fmt.Errorf("frontend: eventfd: %w", err)
	}
	return r, nil
}

// Close closes the eventfds.
func (r *Ring) Close() {
	if r.Kick >= 0 {
		unix.Close(r.Kick)
	}
	if r.Call >= 0 {
		unix.Close(r.Call)
	}
	r.Kick, r.Call = -1, -1
}

// WriteDesc writes descriptor i (any values: hostile tests use this). On a
// packed ring it stages it: PushAvail lays the chain out in the ring.
func (r *Ring) WriteDesc(i uint16, addr uint64, n uint32, flags, next uint16) {
	if r.packed != nil {
		r.packed.staged[i%r.Size] = stagedDesc{addr, n, flags, next}
		return
	}
	d := r.desc[16*int(i%r.Size):]
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// PushAvail publishes head in the avail ring. The descriptors it names must
// be written before: the atomic idx store is the release.
//
// On a packed ring it writes the chain staged at head into the next
// descriptors, with head as the buffer ID, the head's flags last.
func (r *Ring) PushAvail(head uint16) {
	if r.packed != nil {
		r.pushPacked(head)
		return
	}
	binary.LittleEndian.PutUint16(r.avail[4+2*int(r.availIdx%r.Size):], head)
	r.availIdx++
	if !r.holdAvail {
		store16(r.avail, 2, r.availIdx)
	}
}

// HoldAvail makes PushAvail write entries without moving avail.idx, until
// ReleaseAvail publishes them all with one store: the device sees the whole
// batch or none of it, as when a guest driver adds several buffers before
// one kick.
func (r *Ring) HoldAvail() { r.holdAvail = true }

// ReleaseAvail publishes the entries pushed since HoldAvail.
func (r *Ring) ReleaseAvail() {
	r.holdAvail = false
	if r.packed != nil {
		r.releasePacked()
		return
	}
	store16(r.avail, 2, r.availIdx)
}

// SetAvailIdx stores an arbitrary avail.idx (hostile tests; split rings
// only).
func (r *Ring) SetAvailIdx(v uint16) {
	r.availIdx = v
	store16(r.avail, 2, v)
}

// Notify kicks the device unless it suppressed notifications (used.flags
// NO_NOTIFY, or avail_event not crossed with EVENT_IDX).
//
// On a packed ring the device area decides: DISABLE, ENABLE, or with
// EVENT_IDX the DESC position.
func (r *Ring) Notify() bool {
	if r.packed != nil {
		return r.notifyPacked()
	}
	old, now := r.notified, r.availIdx
	r.notified = now
	if old == now {
		return false
	}
	// The atomic avail.idx store in PushAvail and the atomic loads below
	// are sequentially consistent: the full barrier virtio asks for.
	var need bool
	if r.EventIdx {
		ev := load16(r.used, 4+8*int(r.Size))
		need = now-ev-1 < now-old
	} else {
		need = load16(r.used, 0)&usedFNoNotify == 0
	}
	if need {
		r.ForceKick()
	}
	return need
}

// ForceKick writes the kick eventfd regardless of suppression.
func (r *Ring) ForceKick() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(r.Kick, one[:])
}

// UsedIdx is the device's published used.idx. A packed ring keeps none in
// memory: it counts, modulo 2^16, the used descriptors PopUsed returned,
// plus one when the next is already there, so that, as on a split ring,
// UsedIdx differs from the count popped exactly when PopUsed has one.
func (r *Ring) UsedIdx() uint16 {
	if r.packed != nil {
		if r.usedReady() {
			return r.packed.popped + 1
		}
		return r.packed.popped
	}
	return load16(r.used, 2)
}

// PopUsed returns the next used element, if the device published one. With
// EVENT_IDX it re-arms used_event for the element after it.
func (r *Ring) PopUsed() (id, n uint32, ok bool) {
	if r.packed != nil {
		return r.popUsedPacked()
	}
	if r.lastUsed == r.UsedIdx() {
		return 0, 0, false
	}
	e := r.used[4+8*int(r.lastUsed%r.Size):]
	id, n = binary.LittleEndian.Uint32(e[0:]), binary.LittleEndian.Uint32(e[4:])
	r.lastUsed++
	if r.EventIdx {
		store16(r.avail, 4+2*int(r.Size), r.lastUsed)
	}
	return id, n, true
}

// WaitCall waits up to d for the call eventfd and consumes it. It reports
// whether it fired.
func (r *Ring) WaitCall(d time.Duration) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(r.Call), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(d.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("frontend: poll call eventfd: %w", err)
		}
		if n == 0 {
			return false, nil
		}
		var buf [8]byte
		unix.Read(r.Call, buf[:])
		return true, nil
	}
}
