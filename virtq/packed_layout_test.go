package virtq

import (
	"bytes"
	"testing"
)

// TestPackedLayoutByteOffsets pins the packed ring's guest-visible bytes
// (virtio 1.2 §2.8.13, §2.8.14): a used descriptor as the device writes it
// and the device area in each of its states.
func TestPackedLayoutByteOffsets(t *testing.T) {
	offsets := []struct {
		name      string
		got, want int
	}{
		{"desc addr", packedDescOffAddr, 0},
		{"desc len", packedDescOffLen, 8},
		{"desc id", packedDescOffID, 12},
		{"desc flags", packedDescOffFlags, 14},
		{"desc size", descSize, 16},
		{"event off_wrap", eventOffOffWrap, 0},
		{"event flags", eventOffFlags, 2},
		{"event size", eventSize, 4},
		{"flag AVAIL", descFAvail, 0x80},
		{"flag USED", descFUsed, 0x8000},
		{"event ENABLE", eventFlagsEnable, 0},
		{"event DISABLE", eventFlagsDisable, 1},
		{"event DESC", eventFlagsDesc, 2},
		{"wrap bit", wrapBit, 0x8000},
	}
	for _, o := range offsets {
		if o.got != o.want {
			t.Errorf("%s = %d, want %d", o.name, o.got, o.want)
		}
	}

	d := newPackedDriver(t, 4)
	q := d.queue(true, false)
	c := q.NewChain()
	d.add(3, desc{addr: d.alloc(0x30, 0), len: 0x30, flags: descFWrite})
	before := append([]byte(nil), d.mem.slice(t, descGPA, descSize)...)
	mustNext(t, q, c)
	q.Push(3, 0x0a0b0c0d)
	q.Publish()
	got := d.mem.slice(t, descGPA, descSize)
	want := append(append([]byte(nil), before[:8]...), // addr: left as the driver wrote it
		0x0d, 0x0c, 0x0b, 0x0a, // len: bytes written
		0x03, 0x00, // id
		0x82, 0x80) // flags: WRITE | AVAIL | USED (wrap counter 1)
	if !bytes.Equal(got, want) {
		t.Fatalf("used descriptor % x, want % x", got, want)
	}

	area := func() []byte { return d.mem.slice(t, deviceAreaGPA, eventSize) }
	q.DisableKicks()
	if want := []byte{0, 0, 1, 0}; !bytes.Equal(area(), want) {
		t.Fatalf("device area after DisableKicks % x, want % x", area(), want)
	}
	q.EnableKicks() // DESC at index 1, wrap counter 1
	if want := []byte{0x01, 0x80, 2, 0}; !bytes.Equal(area(), want) {
		t.Fatalf("device area after EnableKicks % x, want % x", area(), want)
	}
}
