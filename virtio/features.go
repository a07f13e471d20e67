package virtio

// Reserved feature bits (virtio 1.2 §6): they describe the ring and the
// transport, whatever the device.
const (
	FRingIndirectDesc uint64 = 1 << 28 // VIRTIO_F_INDIRECT_DESC (§2.7.5.3)
	FRingEventIdx     uint64 = 1 << 29 // VIRTIO_F_EVENT_IDX (§2.7.7)
	FVersion1         uint64 = 1 << 32 // VIRTIO_F_VERSION_1
	FRingPacked       uint64 = 1 << 34 // VIRTIO_F_RING_PACKED (§2.8)
)

// Device status bits (virtio 1.2 §2.1).
const (
	StatusAcknowledge      uint8 = 1
	StatusDriver           uint8 = 2
	StatusDriverOK         uint8 = 4
	StatusFeaturesOK       uint8 = 8
	StatusDeviceNeedsReset uint8 = 0x40
	StatusFailed           uint8 = 0x80
)
