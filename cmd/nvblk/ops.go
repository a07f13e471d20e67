package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/control"
)

// opsListeners are serve's operator endpoints: the control socket
// (--control-socket) and the metrics listener (--metrics-addr).
type opsListeners struct {
	control net.Listener // nil when not asked for
	metrics net.Listener
	ctrl    *control.Server
	http    *http.Server
}

// listenOps opens the endpoints asked for; the caller closes them.
func listenOps(controlPath, metricsAddr string) (*opsListeners, error) {
	o := &opsListeners{}
	if controlPath != "" {
		l, err := vhost.Listen(controlPath)
		if err != nil {
			return nil, fmt.Errorf("--control-socket: %w", err)
		}
		o.control = l
	}
	if metricsAddr != "" {
		l, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			o.close()
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		o.metrics = l
	}
	return o, nil
}

// serve answers on the endpoints for srv until close.
func (o *opsListeners) serve(srv *vhost.Server, lg logrus.FieldLogger) {
	if o.control != nil {
		o.ctrl = control.NewServer(srv, control.DefaultInterval)
		go func() {
			if err := o.ctrl.Serve(o.control); err != nil {
				lg.WithError(err).Error("control socket stopped")
			}
		}()
		lg.WithField("control_socket", o.control.Addr().String()).Info("control socket listening")
	}
	if o.metrics != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", control.MetricsHandler(srv))
		o.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := o.http.Serve(o.metrics); err != nil && !errors.Is(err, http.ErrServerClosed) {
				lg.WithError(err).Error("metrics endpoint stopped")
			}
		}()
		lg.WithField("metrics", "http://"+o.metrics.Addr().String()+"/metrics").Info("metrics endpoint listening")
	}
}

// close stops the endpoints; the control socket file is removed.
func (o *opsListeners) close() {
	if o.ctrl != nil {
		o.ctrl.Close() // closes o.control
	} else if o.control != nil {
		o.control.Close()
	}
	if o.http != nil {
		o.http.Close() // closes o.metrics
	} else if o.metrics != nil {
		o.metrics.Close()
	}
}
