// Package control is nvblk serve's control socket and metrics endpoint:
// what an operator asks a running backend.
//
// The control socket is a unix stream socket speaking JSON lines: each line
// a request {"cmd":"status"|"stats"|"detach"}, each answered by one JSON
// line, {"ok":true,...} or {"ok":false,"error":"..."}:
//
//   - status: queues (index, enabled, running, broken, last avail index,
//     in flight), totals, IOPS and throughput over the last sampling
//     interval, latency percentiles and log2 histograms per queue;
//   - stats: the raw vhost.Stats snapshot (counters since start);
//   - detach: drops the current vhost-user front-end; the backend then
//     accepts the next one.
//
// A serve with many disks (NewDisksServer over a Disks) answers status for
// every disk, takes {"disk":"NAME"} on stats and detach, and adds
// disk-add {"spec":"name=...,blk-file=...,socket-path=..."}, disk-remove
// {"disk":"NAME","mode":"force"|"drain","timeout":"30s"} and disk-list;
// its metrics label every sample disk="NAME". A request field the server
// does not know is refused.
//
// The metrics endpoint serves the same counters in the Prometheus text
// exposition format (version 0.0.4) at /metrics (NewMetricsServer).
//
// Neither endpoint can be made to stop serving or to starve the backend
// of file descriptors. A control connection is closed when it sends no
// request line for Options.IdleTimeout, and one over Options.MaxConns is
// answered with an error line and closed; a metrics connection has read,
// write and idle timeouts, and one over MetricsOptions.MaxConns is closed
// when accepted. Failed accepts (out of descriptors, an aborted connection)
// are retried with a growing pause, never returned, on both. No request
// but a disk-remove drain (bounded by MaxDrainTimeout, ended by Close)
// waits for the guest: status, stats and detach use vhost.Server.Stats and
// Detach, which never wait for a request in flight, and the control server
// holds no lock of its own while calling them.
package control
