package vhost

import "github.com/nvblk/nvblk/vhost/blk"

// blkBackend serves a vhost/blk device.
type blkBackend struct {
	dv   *blk.Device
	disk blk.Disk
}

// NewBlkBackend exposes dv, built on disk, as a vhost-user-blk device. disk
// is flushed on Server.Shutdown.
func NewBlkBackend(dv *blk.Device, disk blk.Disk) Backend {
	return blkBackend{dv: dv, disk: disk}
}

func (b blkBackend) Features() uint64    { return b.dv.Features() }
func (b blkBackend) Config() []byte      { return b.dv.Config() }
func (b blkBackend) NumQueues() int      { return int(b.dv.NumQueues()) }
func (b blkBackend) NewHandler() Handler { return blkHandler{b.dv.NewHandler()} }

func (b blkBackend) Flush() error {
	if b.dv.ReadOnly() {
		return nil // nothing was written; a read-only disk may refuse Flush
	}
	return b.disk.Flush()
}

// blkHandler is a vhost/blk handler that reports its requests' outcomes
// to the worker's statistics.
type blkHandler struct{ *blk.Handler }

func (h blkHandler) LastOutcome() Outcome {
	o := h.Last()
	if !o.Valid {
		return Outcome{Op: OpOther, Status: StatusOther}
	}
	op := OpOther
	switch o.Type {
	case blk.TypeIn:
		op = OpRead
	case blk.TypeOut:
		op = OpWrite
	case blk.TypeFlush:
		op = OpFlush
	}
	return Outcome{Op: op, Bytes: o.Bytes, Status: min(o.Status, StatusOther)}
}
