package blk

import "github.com/nvblk/nvblk/vhost"

// backend serves a Device through the vhost-user back-end server.
type backend struct {
	dv   *Device
	disk Disk
}

// NewBackend exposes dv, built on disk, as a vhost-user-blk device. disk
// is flushed on Server.Shutdown.
func NewBackend(dv *Device, disk Disk) vhost.Backend {
	return backend{dv: dv, disk: disk}
}

func (b backend) Features() uint64 { return b.dv.Features() }
func (b backend) Config() []byte   { return b.dv.Config() }
func (b backend) NumQueues() int   { return int(b.dv.NumQueues()) }
func (b backend) NewHandler(features uint64) vhost.Handler {
	h := b.dv.NewHandler()
	h.SetDriverFeatures(features)
	return h
}

func (b backend) Flush() error {
	if b.dv.ReadOnly() {
		return nil // nothing was written; a read-only disk may refuse Flush
	}
	return b.disk.Flush()
}
