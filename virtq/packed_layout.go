package virtq

// Layout of a packed virtqueue in guest memory (virtio 1.2 §2.8.13 "The
// Virtqueue Descriptor Format" and §2.8.14 "Event Suppression Structure
// Format"). Every byte offset of the packed ring is here;
// packed_layout_test.go pins them. All fields are little-endian.
//
// Descriptor ring: Size descriptors of 16 bytes (struct pvirtq_desc), in
// the Descriptor Area, 16-aligned:
//
//	offset 0   le64 addr   buffer address (unused in a used descriptor)
//	offset 8   le32 len    buffer length; bytes written in a used one
//	offset 12  le16 id     buffer ID (in the last descriptor of a chain)
//	offset 14  le16 flags  NEXT, WRITE, INDIRECT, AVAIL (bit 7), USED (bit 15)
//
// id and flags share the aligned 32-bit word at offset 12: the driver's
// flags store makes a descriptor available and ours makes it used, so that
// word is loaded and stored with sync/atomic, id included.
//
// Event suppression (struct pvirtq_event_suppress), 4 bytes, 4-aligned:
// the Driver Area holds the driver's (read-only to us: may we interrupt
// it), the Device Area ours (write-only to us: may it kick us):
//
//	offset 0  le16 off_wrap  bits 0-14 descriptor offset, bit 15 wrap counter
//	offset 2  le16 flags     bits 0-1: ENABLE 0, DISABLE 1, DESC 2 (EVENT_IDX)
//
// Both halves are one aligned word, loaded (driver area) or stored (device
// area) as one atomic 32-bit access.
const (
	packedDescOffAddr  = 0
	packedDescOffLen   = 8
	packedDescOffID    = 12 // u32 word: id | flags
	packedDescOffFlags = 14

	eventOffOffWrap = 0 // u32 word: off_wrap | flags
	eventOffFlags   = 2
	eventSize       = 4

	// Flag bits only a packed descriptor has (§2.8.1). NEXT, WRITE and
	// INDIRECT are the split ring's descF* values.
	descFAvail = 1 << 7
	descFUsed  = 1 << 15

	// Event suppression flags (§2.8.10).
	eventFlagsEnable  = 0
	eventFlagsDisable = 1
	eventFlagsDesc    = 2
	eventFlagsMask    = 3

	// wrapBit is where off_wrap, and the positions LastAvail and UsedIdx
	// report (vhost-user's VRING_BASE), keep the wrap counter.
	wrapBit = 1 << 15
	offMask = wrapBit - 1
)
