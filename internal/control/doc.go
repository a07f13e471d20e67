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
// The metrics endpoint serves the same counters in the Prometheus text
// exposition format (version 0.0.4) at /metrics.
package control
