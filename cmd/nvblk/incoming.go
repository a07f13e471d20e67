package main

import (
	"context"
	"fmt"
	"net"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/nbd"
)

// serveIncoming listens on the --incoming NBD URI and receives the disk
// there in the background; the serve's queues hold the guest's requests
// until it has arrived. A listener that cannot be opened is serve's
// error, before anything is served.
func serveIncoming(ctx context.Context, s *blkserve.Served, uri string, log logrus.FieldLogger) error {
	addr, err := nbd.ParseURI(uri)
	if err != nil {
		return usagef("--incoming: %v", err)
	}
	l, err := net.Listen(addr.Network, addr.Addr)
	if err != nil {
		return fmt.Errorf("--incoming %s: %w", uri, err)
	}
	log.WithField("incoming", uri).Info("waiting for the disk to arrive (nvblk move on the source host); the guest's requests wait for it")
	go func() {
		if err := s.ServeIncoming(ctx, l, log); err != nil && ctx.Err() == nil {
			log.WithError(err).Error("incoming: the disk did not arrive")
		}
	}()
	return nil
}
