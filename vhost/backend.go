package vhost

import "github.com/nvblk/nvblk/virtq"

// Backend is the virtio device the Server exposes. The Server is
// device-agnostic: it owns the socket, guest memory and vrings and asks the
// Backend only for what is device-specific.
type Backend interface {
	// Features returns the virtio feature bits the device offers (device,
	// ring and VERSION_1 bits). The server adds VHOST_USER_F_PROTOCOL_FEATURES.
	Features() uint64
	// Config returns the device config space (GET_CONFIG).
	Config() []byte
	// NumQueues is the number of virtqueues (GET_QUEUE_NUM).
	NumQueues() int
	// NewHandler returns a handler for one queue; each started queue gets
	// its own and calls it from one goroutine only. features are the bits
	// the driver accepted (SET_FEATURES): some limits bind only a driver
	// that negotiated them.
	NewHandler(features uint64) Handler
	// Flush makes completed writes durable (Server.Shutdown).
	Flush() error
}

// Handler processes one request chain and reports what it did: the bytes
// it wrote into the chain's device-writable buffers (the used element's len)
// and, for the statistics, the kind of request and its status.
type Handler interface {
	Handle(c *virtq.Chain) Outcome
}

// handlerCloser is implemented by handlers that hold resources for their
// queue's lifetime; the worker closes them when the queue stops.
type handlerCloser interface {
	Close()
}

// ConfigWriter is implemented by backends whose config space has writable
// fields (SET_CONFIG); others refuse SET_CONFIG.
type ConfigWriter interface {
	SetConfig(offset uint32, data []byte, flags uint32) error
}

// BadChainHandler is implemented by handlers that can answer a chain virtq
// refused as malformed (a loop, a buffer outside guest memory, a nested
// indirect table...). The chain holds the segments parsed before the fault.
// It returns the bytes it wrote, the used element's len. Handlers without it
// get their malformed chains completed with nothing written.
type BadChainHandler interface {
	HandleBadChain(c *virtq.Chain) uint32
}
