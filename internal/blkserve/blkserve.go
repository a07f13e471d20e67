// Package blkserve turns an open BTT into the vhost-user-blk server that
// serves it. It sits between cmd/nvblk and the layers it wires together:
//
//	cmd/nvblk serve, internal/vhosttest
//	  -> blkserve.New
//	  -> vhost.NewServer(blk.NewBackend(blk.NewDevice(...)))
//	  -> btt.Device (one btt.Lane per running queue, while lanes last) -> pmem
//
// It exists so that there is one wiring: `nvblk serve` and the tests that
// serve a BTT (end to end, conformance, load generator) build the server
// with the same function, so the tests run the path production runs (a
// BTT lane held per queue, write-through on a medium that persists every
// step) instead of a copy that can drift from it.
package blkserve

import (
	"errors"
	"fmt"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/diskmove"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
)

// Config is what the operator chooses about a served BTT (`nvblk serve`'s
// flags); the rest follows from the BTT and its medium.
type Config struct {
	NumQueues uint16 // request queues; 0 means 1
	ReadOnly  bool   // offer a read-only disk even if the BTT is writable
	Serial    string // GET_ID answer; at most 20 bytes, longer is cut
	// Server holds the protocol settings: poll duration, logger, message
	// timeout.
	Server vhost.Options
	// Arriving serves a disk that is still arriving from another host
	// (ServeIncoming): the guest's requests wait until it has.
	Arriving bool
}

// MaxQueues is the most request queues a served BTT offers: one per BTT
// lane, and no BTT has more lanes than a fresh one, btt.DefaultNFree (256;
// btt.Open uses at most that many, the kernel's ND_MAX_LANES). It is well
// below what a front-end can ask for: QEMU's vhost-user-blk takes up to
// VIRTIO_QUEUE_MAX (1024) queues, and one per vCPU by default.
const MaxQueues = btt.DefaultNFree

// ErrTooManyQueues is returned by New for more queues than the BTT has
// lanes.
var ErrTooManyQueues = errors.New("more queues than the BTT has lanes")

// Lanes is how many lanes d has, and so how many queues New serves it
// with: btt.Open keeps min(nfree, MaxQueues) lanes of the arena with the
// fewest free blocks.
func Lanes(d *btt.Device) int {
	lanes := MaxQueues
	for _, a := range d.Arenas() {
		lanes = min(lanes, int(a.NFree))
	}
	return lanes
}

// Served is a BTT made into a vhost-user-blk device, ready to Serve.
type Served struct {
	Server *vhost.Server
	Device *blk.Device // what the guest is offered
	// WriteThrough is true when every completed write is already durable:
	// the device then reports no volatile cache and offers no FLUSH.
	WriteThrough bool
	// Tracker stands in front of every queue's disk: Move and
	// ServeIncoming drive it (package diskmove).
	Tracker *diskmove.Tracker
	disk    *btt.Device
}

// New builds the virtio-blk device over d and the server for it. dur is
// the durability mode in force on d's medium (pmem.Medium.Durability):
// DurabilityAuto is refused because only the resolved mode says whether
// a write is durable when it completes. d must stay open until the server
// has shut down; each running queue holds one of its lanes while there are
// enough, the others take a lane per request (see laneDisk). It refuses
// more queues than d has lanes (Lanes) with ErrTooManyQueues: each queue
// is a worker goroutine that may hold a lane, and past the lanes a queue
// adds nothing but contention for them.
func New(d *btt.Device, dur pmem.Durability, c Config) (*Served, error) {
	writeThrough, err := isWriteThrough(dur)
	if err != nil {
		return nil, err
	}
	if lanes := Lanes(d); int(c.NumQueues) > lanes {
		return nil, fmt.Errorf("blkserve: %d queues: %w (%d): a queue per lane at most", c.NumQueues, ErrTooManyQueues, lanes)
	}
	tr := diskmove.NewTracker()
	if c.Arriving {
		tr = diskmove.NewArrivingTracker()
	}
	dv := blk.NewDevice(tr.Wrap(d), blk.Options{
		NumQueues:    c.NumQueues,
		ReadOnly:     c.ReadOnly,
		Serial:       c.Serial,
		WriteThrough: writeThrough,
		QueueDisk:    laneDisk(d, tr, c.Server.Logger, readHelpers(d, c.NumQueues)),
	})
	srv := vhost.NewServer(blk.NewBackend(dv, d), c.Server)
	return &Served{Server: srv, Device: dv, WriteThrough: writeThrough, Tracker: tr, disk: d}, nil
}

// Extender is a medium that can grow while in use: pmem.Medium of an image
// file.
type Extender interface {
	Size() int64
	Extend(newSize int64) error
}

// Grown is what Grow did.
type Grown struct {
	btt.GrowResult
	// Told is how many attached front-ends were sent the config change.
	Told int
}

// Grow makes the served disk larger while guests may be attached: the
// medium grows to newSize bytes (unless it already has them: a grow that
// stopped part way is finished), the BTT chains arenas over the new space
// (crash-safe, I/O going on), the device takes the new capacity, and
// every front-end that gave a back-end request channel is sent
// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, after which the guest reads it.
func (s *Served) Grow(m Extender, newSize int64) (Grown, error) {
	var g Grown
	if newSize < m.Size() {
		return g, fmt.Errorf("blkserve: the image has %d bytes, more than %d: a disk does not shrink", m.Size(), newSize)
	}
	if newSize > m.Size() {
		if err := m.Extend(newSize); err != nil {
			return g, err
		}
	}
	res, err := s.disk.Grow()
	g.GrowResult = res
	if err != nil {
		return g, err
	}
	if !s.Device.Resize() {
		return g, nil
	}
	g.Told, err = s.Server.NotifyConfigChange()
	if err != nil {
		return g, fmt.Errorf("blkserve: the disk grew to %d sectors, but telling front-ends failed: %w", res.SectorsAfter, err)
	}
	return g, nil
}

// isWriteThrough: in the dax and sync modes every step is persisted before
// a write completes, so the device has no volatile cache to flush.
func isWriteThrough(dur pmem.Durability) (bool, error) {
	switch dur {
	case pmem.DurabilityFlush:
		return false, nil
	case pmem.DurabilitySync, pmem.DurabilityDAX:
		return true, nil
	}
	return false, fmt.Errorf("blkserve: durability %v: want the medium's resolved mode (flush, sync or dax)", dur)
}

// readHelpers says whether a serve of queues queues on d gives each a read
// helper: only when the image has lanes for every queue and a helper each.
// (AddReadHelper itself refuses on one CPU.)
func readHelpers(d *btt.Device, queues uint16) bool {
	return 2*max(int(queues), 1) < Lanes(d)
}

// laneDisk gives each queue its own BTT lane for as long as it runs, so
// the queues' I/O takes no shared lock on the lane pool. A queue starts
// under its session's lock, so it must not wait for a lane: when none may
// be had (an image with fewer lanes than queues, or lanes held by other
// queues) TryAcquireLane says so at once, and the queue runs on the shared
// device instead, which takes a lane per request from the lanes no queue
// holds; TryAcquireLane always leaves one of those.
//
// With helpers, when the image has lanes for every queue and a read helper
// each, a queue's lane also gets a read helper: a second lane that copies
// half of the queue's large reads on another core. Without lanes for all,
// queues keep one lane each, as they need their own more.
//
// Each disk a queue gets is tr's Wrap of it.
func laneDisk(d *btt.Device, tr *diskmove.Tracker, lg logrus.FieldLogger, helpers bool) func() (blk.Disk, func(), error) {
	if lg == nil {
		lg = logrus.StandardLogger()
	}
	return func() (blk.Disk, func(), error) {
		ln, err := d.TryAcquireLane()
		if err != nil {
			lg.WithError(err).Info("queue takes a BTT lane per request: no lane of its own to hold")
			return nil, nil, fmt.Errorf("blkserve: queue lane: %w", err)
		}
		if helpers {
			if err := ln.AddReadHelper(); err != nil {
				lg.WithError(err).Debug("queue reads on one lane: no read helper")
			}
		}
		return tr.Wrap(ln), ln.Release, nil
	}
}
