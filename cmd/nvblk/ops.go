package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/control"
	"github.com/nvblk/nvblk/vhostuser"
)

// controlSuffix names serve's default control socket: S.ctl next to its
// vhost-user socket S, where `nvblk status --socket-path S` looks.
const controlSuffix = ".ctl"

// controlNone is the --control-socket value that opens no control socket.
const controlNone = "none"

// defaultControlSocket is the control socket of the serve listening on
// socketPath when it was given no --control-socket.
func defaultControlSocket(socketPath string) string { return socketPath + controlSuffix }

// controlSocket is where serve opens its control socket ("" for none):
// --control-socket PATH, none for "none", and by default S.ctl next to
// --socket-path S. With --fd serve was given no path to put one next to,
// so only an explicit --control-socket opens one. explicit says whether
// --control-socket was on the command line.
func (a *serveArgs) controlSocket(explicit bool) (path string, byDefault bool, err error) {
	switch {
	case a.control == controlNone:
		return "", false, nil
	case explicit && a.control == "":
		return "", false, usagef("--control-socket \"\": want a path, or %s to open no control socket", controlNone)
	case explicit && a.socketPath != "" && samePath(a.control, a.socketPath):
		return "", false, usagef("--control-socket %q is the --socket-path: the control socket needs a path of its own", a.control)
	case explicit:
		return a.control, false, nil
	case a.socketPath != "":
		return defaultControlSocket(a.socketPath), true, nil
	}
	return "", false, nil
}

func samePath(a, b string) bool {
	absA, errA := filepath.Abs(a)
	absB, errB := filepath.Abs(b)
	return errA == nil && errB == nil && absA == absB
}

// absPath is path made absolute when it can be, for logs and for commands
// an operator runs from another directory.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// opsListeners are serve's operator endpoints: the control socket
// (--control-socket, by default --socket-path + ".ctl") and the metrics
// listener (--metrics-addr).
type opsListeners struct {
	control     net.Listener // nil when none is opened
	controlPath string       // its absolute path
	// skipped says why the default control socket was not opened, when
	// that was not worth failing serve for.
	skipped error
	metrics net.Listener
	ctrl    *control.Server
	http    *http.Server
	closed  bool // by close; serve's goroutine alone uses o
}

// listenOps opens the endpoints asked for; the caller closes them. The
// control socket is created the way the vhost-user socket is (vhostuser.Listen:
// a stale socket file is replaced, a live one, a symlink or any other file
// refused), but always 0600 whatever --socket-mode says: whoever can
// connect to it can detach the guest, which is more than a front-end
// waiting its turn on the vhost-user socket can do. byDefault says the
// path is the default S.ctl, which the error then names as such.
func listenOps(controlPath string, byDefault bool, metricsAddr string) (*opsListeners, error) {
	o := &opsListeners{}
	if controlPath != "" {
		l, err := vhostuser.Listen(controlPath)
		switch {
		case errors.Is(err, vhostuser.ErrPathTooLong) && byDefault:
			// The vhost-user socket's own path fits; serving the guest
			// matters more than the convenience of a default S.ctl.
			o.skipped = fmt.Errorf("no default control socket: %w (--control-socket PATH puts one elsewhere)", err)
		case err != nil && byDefault:
			return nil, fmt.Errorf("the default control socket (--socket-path + %q): %w "+
				"(--control-socket PATH puts it elsewhere, --control-socket %s opens none)", controlSuffix, err, controlNone)
		case err != nil:
			return nil, fmt.Errorf("--control-socket: %w", err)
		default:
			o.control, o.controlPath = l, absPath(controlPath)
		}
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
func (o *opsListeners) serve(srv control.Target, lg logrus.FieldLogger) {
	o.start(func() *control.Server { return control.NewServer(srv, control.DefaultInterval) },
		func() *http.Server { return control.NewMetricsServer(srv, control.MetricsOptions{}) }, lg)
}

// serveDisks answers on the endpoints for every disk of d until close:
// status and metrics labelled by disk, and the disk commands.
func (o *opsListeners) serveDisks(d control.Disks, lg logrus.FieldLogger) {
	o.start(func() *control.Server { return control.NewDisksServer(d, control.Options{Logger: lg}) },
		func() *http.Server { return control.NewDisksMetricsServer(d, control.MetricsOptions{}) }, lg)
}

// start serves the endpoints that listen, with the servers made by
// newCtrl and newMetrics.
func (o *opsListeners) start(newCtrl func() *control.Server, newMetrics func() *http.Server, lg logrus.FieldLogger) {
	if o.skipped != nil {
		lg.Warn(o.skipped.Error())
	}
	if o.control != nil {
		o.ctrl = newCtrl()
		go func() {
			if err := o.ctrl.Serve(o.control); err != nil {
				lg.WithError(err).Error("control socket stopped")
			}
		}()
		lg.WithField("control_socket", o.controlPath).Info("control socket listening")
	}
	if o.metrics != nil {
		o.http = newMetrics()
		go func() {
			if err := o.http.Serve(o.metrics); err != nil && !errors.Is(err, http.ErrServerClosed) {
				lg.WithError(err).Error("metrics endpoint stopped")
			}
		}()
		lg.WithField("metrics", "http://"+o.metrics.Addr().String()+"/metrics").Info("metrics endpoint listening")
	}
}

// close stops the endpoints; the control socket file is removed. A
// second close does nothing.
func (o *opsListeners) close() {
	if o.closed {
		return
	}
	o.closed = true
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
