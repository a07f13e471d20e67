package blkserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/diskmove"
	"github.com/nvblk/nvblk/nbd"
)

// ErrNotArriving is ServeIncoming on a disk not served as arriving
// (Config.Arriving).
var ErrNotArriving = errors.New("blkserve: the disk is not arriving")

// Move pushes the served disk, while its guest runs, to the NBD export at
// dst (the destination host's `nvblk serve --incoming`), switching over
// when the guest's live migration does: when every front-end that started
// the device has stopped its rings with its dirty log on (QEMU's
// switch-over) or left. From then on this disk refuses writes
// (diskmove.ErrFenced). On success the destination has the disk as it was
// then, and has been told so (the NBD client's flush and clean
// disconnect); o.Cutover is ignored.
func (s *Served) Move(ctx context.Context, dst nbd.Address, o diskmove.Options) (diskmove.Stats, error) {
	c, err := nbd.Dial(ctx, dst.Network, dst.Addr, nbd.ClientOptions{Export: dst.Export})
	if err != nil {
		return diskmove.Stats{}, fmt.Errorf("blkserve: move to %s: %w", dst, err)
	}
	if got, want := c.Size(), s.disk.NumSectors()*uint64(s.disk.SectorSize()); got != want {
		c.Close()
		return diskmove.Stats{}, fmt.Errorf("blkserve: move to %s: the destination has %d bytes, this disk %d: format it with the same size and sector size", dst, got, want)
	}
	if bs := c.Info().MinBlock; bs != 0 && (bs > s.disk.SectorSize() || s.disk.SectorSize()%bs != 0) {
		c.Close()
		return diskmove.Stats{}, fmt.Errorf("blkserve: move to %s: the destination's blocks are %d bytes, this disk's sectors %d", dst, bs, s.disk.SectorSize())
	}
	o.Cutover = s.switchedOver
	st, err := s.Tracker.Push(ctx, s.disk, c, o)
	if err != nil {
		c.Close()
		return st, fmt.Errorf("blkserve: move to %s: %w", dst, err)
	}
	// The clean disconnect after the flush is what the destination takes
	// as the disk's arrival.
	if err := c.Close(); err != nil {
		s.Tracker.Unfence()
		return st, fmt.Errorf("blkserve: move to %s: telling the destination the disk is complete: %w", dst, err)
	}
	return st, nil
}

// switchedOver reports that no front-end can write the disk any more.
func (s *Served) switchedOver() bool {
	for _, si := range s.Server.Sessions() {
		if si.Ready && !(si.Stopped && si.Logging) {
			return false
		}
	}
	return true
}

// ServeIncoming receives the disk from another host's Move: it serves the
// BTT as a writable NBD export on l (any name) to one client at a time,
// while the queues hold the guest's requests, until a client that wrote
// flushed after its last write and disconnected cleanly. Then the disk has
// arrived: l is closed, the held requests go through, and ServeIncoming
// returns nil. It returns early with ctx's error, the disk still arriving.
func (s *Served) ServeIncoming(ctx context.Context, l net.Listener, log logrus.FieldLogger) error {
	if !s.Tracker.Arriving() {
		l.Close()
		return ErrNotArriving
	}
	if log == nil {
		log = logrus.StandardLogger()
	}
	srv := nbd.NewServer(nbd.ServerOptions{Logger: log, MaxConnections: 1})
	in := &incomingExport{Device: s.disk}
	if err := srv.AddExport("", in, nbd.ExportOptions{}); err != nil {
		l.Close()
		return err
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer srv.Close()
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("blkserve: incoming: %w", err)
			}
			// A transient accept failure (EMFILE): the source retries
			// its dial, so a pause is enough.
			log.WithError(err).Warn("blkserve: incoming: accept")
			time.Sleep(100 * time.Millisecond)
			continue
		}
		from := nc.RemoteAddr().String()
		in.reset()
		t0 := time.Now()
		err = srv.ServeConn(nc)
		wrote, flushed := in.state()
		if err == nil && wrote && flushed {
			l.Close()
			s.Tracker.Arrived()
			log.WithFields(logrus.Fields{"from": from, "took": time.Since(t0).Round(time.Millisecond)}).
				Info("incoming disk arrived: serving the guest's requests")
			return nil
		}
		log.WithFields(logrus.Fields{"from": from, "wrote": wrote, "flushed_after_last_write": flushed}).WithError(err).
			Warn("incoming: the source left before the disk was complete; waiting for it to come again")
	}
}

// incomingExport is the BTT as the NBD export of an arriving disk: it
// counts the connection's writes, and the writes the last completed flush
// began after, so that arrival can ask whether a flush covered them all.
type incomingExport struct {
	*btt.Device
	mu      sync.Mutex // guards writes and flushed
	writes  uint64     // writes begun on this connection
	flushed uint64     // writes begun before the latest completed flush began
}

func (e *incomingExport) reset() {
	e.mu.Lock()
	e.writes, e.flushed = 0, 0
	e.mu.Unlock()
}

func (e *incomingExport) state() (wrote, flushed bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.writes > 0, e.flushed == e.writes
}

func (e *incomingExport) written() {
	e.mu.Lock()
	e.writes++
	e.mu.Unlock()
}

func (e *incomingExport) WriteV(lba uint64, iov [][]byte) error {
	e.written() // counted before: a flush begun meanwhile does not cover it
	return e.Device.WriteV(lba, iov)
}

func (e *incomingExport) WriteZeroes(lba, n uint64) error {
	e.written()
	return e.Device.WriteZeroes(lba, n)
}

// Flush covers the writes begun before it began. A write begun but not
// completed then is counted too: NBD clients flush only after the replies
// of the writes the flush is for, as Move does.
func (e *incomingExport) Flush() error {
	e.mu.Lock()
	begun := e.writes
	e.mu.Unlock()
	err := e.Device.Flush()
	if err == nil {
		e.mu.Lock()
		e.flushed = max(e.flushed, begun)
		e.mu.Unlock()
	}
	return err
}
