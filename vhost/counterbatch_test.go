package vhost

import (
	"testing"
	"time"
)

// A worker tallies completions in its own batch and adds them to the
// queue's shared counters when it publishes: a reader then sees exactly
// the sums, per counter and per latency bucket, and a second publish with
// nothing new adds nothing.
func TestCounterBatchAddsItsTallyOnceAtPublish(t *testing.T) {
	var c queueCounters
	var b counterBatch
	b.record(Outcome{Op: OpRead, Bytes: 4096, Status: StatusOK}, 3*time.Microsecond)
	b.record(Outcome{Op: OpRead, Bytes: 8192, Status: StatusOK}, 3*time.Microsecond)
	b.record(Outcome{Op: OpWrite, Bytes: 512, Status: StatusIOErr}, 40*time.Millisecond)
	b.record(Outcome{Op: OpFlush, Status: StatusOK}, -time.Second) // a clock step back counts as 0
	var before QueueStats
	c.snapshot(&before)
	if before.Requests != 0 {
		t.Fatalf("counters moved before the batch was flushed: %+v", before)
	}
	b.flushTo(&c)
	b.flushTo(&c)
	var got QueueStats
	c.snapshot(&got)
	if got.Requests != 4 || got.Reads != 2 || got.Writes != 1 || got.Flushes != 1 ||
		got.BytesRead != 12288 || got.BytesWritten != 512 || got.OK != 3 || got.IOErrors != 1 {
		t.Fatalf("after flush: %+v", got)
	}
	want := LatencyHistogram{}
	want[latencyBucket(3*time.Microsecond)] += 2
	want[latencyBucket(40*time.Millisecond)]++
	want[latencyBucket(0)]++
	if got.Latency != want {
		t.Fatalf("latency histogram %v, want %v", got.Latency, want)
	}
	if b != (counterBatch{}) {
		t.Fatalf("the batch was not emptied: %+v", b)
	}
}
