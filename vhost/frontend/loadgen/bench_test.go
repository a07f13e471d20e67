package loadgen_test

import (
	"runtime"
	"testing"

	"github.com/nvblk/nvblk/vhost/frontend/loadgen"
)

// BenchmarkServe4KRead and BenchmarkServe4KWrite run nvblk's server and
// this load generator in one process over a 4 KiB-sector BTT in page-cache
// flush mode: 4 KiB random requests, 32 in flight on one queue. ns/op is
// per request with both sides sharing the machine; allocs/op counts both
// sides' heap allocations per request (the generator's own are zero by
// construction, so any are the server's). Profile with -cpuprofile.
func BenchmarkServe4KRead(b *testing.B)  { benchServe(b, loadgen.RandRead, 32) }
func BenchmarkServe4KWrite(b *testing.B) { benchServe(b, loadgen.RandWrite, 32) }

// QD1 is the latency case: one request, one kick, one interrupt.
func BenchmarkServe4KReadQD1(b *testing.B) { benchServe(b, loadgen.RandRead, 1) }

func benchServe(b *testing.B, mode loadgen.Mode, qd int) {
	sock, _ := serveBTT(b, 256<<20, 1, 0)
	c := loadgen.Config{Mode: mode, BlockSize: 4096, IODepth: qd, Queues: 1, Requests: 20000, SizeLimit: 128 << 20, Fill: true}
	g := newGenerator(b, sock, c)
	if _, err := g.Run(0); err != nil { // fill and warm up
		b.Fatal(err)
	}
	g.Config.Fill, g.Config.Requests = false, uint64(b.N)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	r, err := g.Run(0)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(r.Latency.Quantile(0.5).Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(r.Latency.Quantile(0.99).Nanoseconds()), "p99-ns")
}

// TestServeAllocsPerRequest: the steady-state data path, server and
// generator together, allocates nothing per request. A run's fixed cost
// (goroutines, timers) is cancelled by differencing two run lengths.
func TestServeAllocsPerRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 42000 requests")
	}
	for _, mode := range []loadgen.Mode{loadgen.RandRead, loadgen.RandWrite} {
		t.Run(mode.String(), func(t *testing.T) {
			sock, _ := serveBTT(t, 64<<20, 1, 0)
			g := newGenerator(t, sock, loadgen.Config{Mode: mode, BlockSize: 4096, IODepth: 16, Queues: 1, Requests: 2000, SizeLimit: 32 << 20})
			mallocs := func(n uint64) uint64 {
				g.Config.Requests = n
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				if _, err := g.Run(0); err != nil {
					t.Fatal(err)
				}
				runtime.ReadMemStats(&after)
				return after.Mallocs - before.Mallocs
			}
			mallocs(2000) // warm: lazily grown buffers, first kicks
			short, long := mallocs(2000), mallocs(42000)
			perReq := (float64(long) - float64(short)) / 40000
			t.Logf("%d mallocs for 2000 requests, %d for 42000: %.4f per request", short, long, perReq)
			// Under 1 in 100 requests: a per-request (or per-batch of
			// 32) allocation would be 0.03 or more.
			if perReq > 0.01 {
				t.Fatalf("%.4f heap allocations per request", perReq)
			}
		})
	}
}
