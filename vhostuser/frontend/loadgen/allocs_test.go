// The race detector's instrumentation makes values escape that do not
// otherwise, so heap allocation counts mean nothing under -race (the
// standard library skips its AllocsPerRun tests there too).

//go:build !race

package loadgen_test

import (
	"runtime"
	"testing"

	"github.com/nvblk/nvblk/vhostuser/frontend/loadgen"
)

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
