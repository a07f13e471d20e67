package loadgen

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	// Every value lies in its bucket, at or below the bucket's high bound
	// and above the previous bucket's.
	r := rand.New(rand.NewPCG(1, 2))
	vals := []uint64{0, 1, 63, 64, 65, 127, 128, 129, 1000, 1 << 20, 1<<40 + 12345, 1<<63 + 7, ^uint64(0)}
	for range 10000 {
		vals = append(vals, r.Uint64()>>r.IntN(64))
	}
	for _, v := range vals {
		i := bucket(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucket(%d) = %d out of range", v, i)
		}
		if hi := bucketHigh(i); v > hi {
			t.Fatalf("value %d above its bucket %d high bound %d", v, i, hi)
		}
		if i > 0 {
			if lo := bucketHigh(i - 1); v <= lo {
				t.Fatalf("value %d at or below bucket %d high bound %d", v, i-1, lo)
			}
		}
	}
}

func TestQuantileAgainstSorted(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, dist := range []struct {
		name string
		gen  func() uint64
	}{
		{"uniform-us", func() uint64 { return 1000 + r.Uint64N(1_000_000) }},
		{"exponential", func() uint64 { return uint64(r.ExpFloat64() * 20000) }},
		{"bimodal", func() uint64 {
			if r.IntN(100) == 0 {
				return 5_000_000 + r.Uint64N(1000)
			}
			return 10_000 + r.Uint64N(100)
		}},
	} {
		t.Run(dist.name, func(t *testing.T) {
			var h Histogram
			var vals []uint64
			for range 100_000 {
				v := dist.gen()
				vals = append(vals, v)
				h.Record(v)
			}
			slices.Sort(vals)
			for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999, 1} {
				rank := int(float64(len(vals))*q+0.999999) - 1
				want := vals[max(rank, 0)]
				got := uint64(h.Quantile(q))
				// Never below the exact value, never above it by more than
				// a bucket width (1/64) plus one for small integers.
				if got < want || got > want+want/64+1 {
					t.Errorf("q%.3f = %d, exact %d", q, got, want)
				}
			}
			if h.Count() != uint64(len(vals)) || uint64(h.Max()) != vals[len(vals)-1] {
				t.Errorf("count %d max %d, want %d %d", h.Count(), h.Max(), len(vals), vals[len(vals)-1])
			}
		})
	}
}

func TestMergeEqualsSingle(t *testing.T) {
	var a, b, all Histogram
	for i := uint64(1); i <= 5000; i++ {
		v := i * 997 % 100_003
		all.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	if m != all {
		t.Fatal("merged histogram differs from one recording everything")
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 || empty.Mean() != 0 {
		t.Fatal("empty histogram reports values")
	}
	one := Histogram{}
	one.Record(uint64(3 * time.Millisecond))
	if one.Quantile(0.5) != 3*time.Millisecond || one.Quantile(0.999) != 3*time.Millisecond {
		t.Fatalf("single value: p50 %v p99.9 %v", one.Quantile(0.5), one.Quantile(0.999))
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	var h Histogram
	if n := testing.AllocsPerRun(100, func() { h.Record(12345) }); n != 0 {
		t.Fatalf("Record allocates %v times", n)
	}
}
