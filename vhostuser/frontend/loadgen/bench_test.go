package loadgen_test

import (
	"testing"

	"github.com/nvblk/nvblk/vhostuser/frontend/loadgen"
)

// BenchmarkServe4KRead and BenchmarkServe4KWrite run nvblk's server and
// this load generator in one process over a 4 KiB-sector BTT in page-cache
// flush mode: 4 KiB random requests, 32 in flight on one queue. ns/op is
// per request with both sides sharing the machine; allocs/op counts both
// sides' heap allocations per request (the generator's own are zero by
// construction, so any are the server's). Profile with -cpuprofile.
func BenchmarkServe4KRead(b *testing.B)  { benchServe(b, loadgen.RandRead, 4096, 32) }
func BenchmarkServe4KWrite(b *testing.B) { benchServe(b, loadgen.RandWrite, 4096, 32) }

// QD1 is the latency case: one request, one kick, one interrupt.
func BenchmarkServe4KReadQD1(b *testing.B) { benchServe(b, loadgen.RandRead, 4096, 1) }

// 128 KiB sequential: the per-sector cost of the engine shows.
func BenchmarkServe128KRead(b *testing.B)  { benchServe(b, loadgen.SeqRead, 128<<10, 16) }
func BenchmarkServe128KWrite(b *testing.B) { benchServe(b, loadgen.SeqWrite, 128<<10, 16) }

func benchServe(b *testing.B, mode loadgen.Mode, bs, qd int) {
	sock, _ := serveBTT(b, 256<<20, 1, 0)
	c := loadgen.Config{Mode: mode, BlockSize: bs, IODepth: qd, Queues: 1, Requests: 2000, SizeLimit: 128 << 20, Fill: true}
	g := newGenerator(b, sock, c)
	if _, err := g.Run(0); err != nil { // fill and warm up
		b.Fatal(err)
	}
	g.Config.Fill, g.Config.Requests = false, uint64(b.N)
	b.SetBytes(int64(bs))
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
