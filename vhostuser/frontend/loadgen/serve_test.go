package loadgen_test

import (
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser/frontend/loadgen"
)

// serveBTT serves a fresh 4 KiB-sector BTT of size bytes in this process
// and returns its socket and the engine (for checking what landed).
func serveBTT(tb testing.TB, size int64, queues int, poll time.Duration) (string, *btt.Device) {
	tb.Helper()
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	s := vhosttest.ServeBTT(tb, vhosttest.Options{
		BTTOptions: vhosttest.BTTOptions{Size: size, LBASize: 4096, Durability: pmem.DurabilityFlush},
		Config:     blkserve.Config{NumQueues: uint16(queues), Server: vhost.Options{PollDuration: poll, Logger: lg}},
	})
	return s.Sock, s.Dev
}

func newGenerator(tb testing.TB, sock string, c loadgen.Config) *loadgen.Generator {
	tb.Helper()
	d, err := loadgen.Connect(sock, c)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	g, err := loadgen.New(d, c)
	if err != nil {
		tb.Fatal(err)
	}
	return g
}

func TestRunEveryMode(t *testing.T) {
	sock, _ := serveBTT(t, 64<<20, 2, 0)
	for _, mode := range []loadgen.Mode{loadgen.RandRead, loadgen.RandWrite, loadgen.RandRW, loadgen.SeqRead, loadgen.SeqWrite} {
		t.Run(mode.String(), func(t *testing.T) {
			c := loadgen.Config{Mode: mode, BlockSize: 8192, IODepth: 8, Queues: 2, Requests: 3001, SizeLimit: 16 << 20}
			g := newGenerator(t, sock, c)
			for run := range 2 { // a Generator is reusable
				r, err := g.Run(0)
				if err != nil {
					t.Fatal(err)
				}
				if r.Ops != 3001 || r.Bytes != 3001*8192 || r.Latency.Count() != r.Ops {
					t.Fatalf("run %d: %d ops, %d bytes, %d latencies; want 3001 ops of 8 KiB", run, r.Ops, r.Bytes, r.Latency.Count())
				}
				if r.Elapsed <= 0 || r.IOPS() <= 0 || r.Latency.Quantile(0.5) <= 0 || r.Latency.Quantile(0.5) > r.Latency.Quantile(0.999) {
					t.Fatalf("run %d: elapsed %v, %v IOPS, p50 %v p99.9 %v", run, r.Elapsed, r.IOPS(), r.Latency.Quantile(0.5), r.Latency.Quantile(0.999))
				}
			}
		})
	}
}

// Requests larger than the device's size_max (128 KiB on nvblk) are one
// data descriptor each: the generator must not promise SIZE_MAX, which
// would make the device refuse them.
func TestRequestsLargerThanTheDevicesSizeMaxComplete(t *testing.T) {
	sock, _ := serveBTT(t, 64<<20, 1, 0)
	for _, mode := range []loadgen.Mode{loadgen.SeqWrite, loadgen.SeqRead} {
		g := newGenerator(t, sock, loadgen.Config{Mode: mode, BlockSize: 4 << 20, IODepth: 2, Queues: 1, Requests: 20, SizeLimit: 32 << 20})
		r, err := g.Run(0)
		if err != nil {
			t.Fatalf("%v of 4 MiB requests: %v", mode, err)
		}
		if r.Ops != 20 {
			t.Fatalf("%v: %d of 20 requests of 4 MiB completed", mode, r.Ops)
		}
	}
}

func TestFewerRequestsThanQueues(t *testing.T) {
	sock, _ := serveBTT(t, 32<<20, 4, 0)
	g := newGenerator(t, sock, loadgen.Config{Mode: loadgen.RandWrite, BlockSize: 4096, IODepth: 2, Queues: 4, Requests: 3})
	r, err := g.Run(0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops != 3 {
		t.Fatalf("3 requests over 4 queues completed %d", r.Ops)
	}
}

func TestFillWritesEveryBlock(t *testing.T) {
	sock, d := serveBTT(t, 32<<20, 2, 0)
	const region = 4 << 20
	c := loadgen.Config{Mode: loadgen.RandRead, BlockSize: 16384, IODepth: 4, Queues: 2, Requests: 10, SizeLimit: region, Fill: true}
	g := newGenerator(t, sock, c)
	if _, err := g.Run(0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for lba := uint64(0); lba < region/4096; lba++ {
		if err := d.ReadV(lba, [][]byte{buf}); err != nil {
			t.Fatal(err)
		}
		// The buffers hold byte j = 7j + slot + queue: the second byte
		// is always the first plus 7.
		if buf[1]-buf[0] != 7 {
			t.Fatalf("LBA %d not written by the fill: % x", lba, buf[:8])
		}
	}
	if err := d.ReadV(region/4096, [][]byte{buf}); err != nil || buf[1]-buf[0] == 7 {
		t.Fatalf("the fill wrote past the size limit (%v)", err)
	}
}

func TestTimedRunWithRamp(t *testing.T) {
	sock, _ := serveBTT(t, 32<<20, 1, 0)
	var ticks int
	c := loadgen.Config{Mode: loadgen.RandRead, BlockSize: 4096, IODepth: 4, Queues: 1,
		Duration: 1200 * time.Millisecond, Ramp: 300 * time.Millisecond, Progress: func(loadgen.Progress) { ticks++ }}
	g := newGenerator(t, sock, c)
	r, err := g.Run(0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Elapsed < time.Second || r.Elapsed > 1300*time.Millisecond {
		t.Fatalf("measured %v of a 1.2s run", r.Elapsed)
	}
	if ticks == 0 {
		t.Fatal("no progress reported in 1.5s")
	}
	if r.GenCPU <= 0 {
		t.Fatalf("generator CPU %v", r.GenCPU)
	}
}
