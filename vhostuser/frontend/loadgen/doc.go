// Package loadgen drives a vhost-user-blk back-end through package frontend
// the way fio drives a disk: a fixed number of requests in flight per
// queue, random or sequential offsets, a timed run, and IOPS, bandwidth and
// a latency histogram as the result. It plays a guest driver, not a
// benchmark harness around one: it shares the cores with the back-end it
// measures, so it is built to be cheap — every request, descriptor and
// buffer is laid out once before the clock starts, a completion costs a
// used-ring read, a histogram increment and a header rewrite, and nothing
// is allocated per request.
package loadgen
