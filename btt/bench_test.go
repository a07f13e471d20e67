package btt_test

import (
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// The engine benchmarks run next to a plain memcpy of the same size into
// the same mapping, timed in the same benchmark, and report the ratio
// (x_memcpy: 1.0 = as fast as the faster of the built-in copy and
// pmem.Copy; x_builtin: against the built-in copy alone). The BTT stays in the page-cache
// "flush" durability mode, where Persist costs nothing, so the ratio is the
// engine's own overhead: map lookup, read tracking, lane, flog and map
// stores.

func benchDevice(b *testing.B, size int64) (*pmem.Medium, *btt.Device) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "bench.img")
	m, err := pmem.Open(path, pmem.Options{Create: true, Size: size, Durability: pmem.DurabilityFlush})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	if err := btt.Format(m, btt.FormatOptions{LBASize: 4096}); err != nil {
		b.Fatal(err)
	}
	d, err := btt.Open(m, btt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	// Touch every sector once so neither side pays page faults.
	buf := make([]byte, 4096)
	for lba := uint64(0); lba < d.NumSectors(); lba++ {
		if err := d.WriteV(lba, [][]byte{buf}); err != nil {
			b.Fatal(err)
		}
	}
	return m, d
}

// parallel runs n iterations of op split over g goroutines and returns the
// wall time.
func parallel(g, n int, op func(worker, i int)) time.Duration {
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < g; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += g {
				op(w, i)
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

func benchEngine(b *testing.B, goroutines int, write, ownLanes bool) {
	m, d := benchDevice(b, 256<<20)
	nlba := int(d.NumSectors())
	// The baseline copies over as many 4 KiB slots as the BTT has sectors,
	// inside the BTT's own data area (v1.1: it starts at 8 KiB), so both
	// sides touch the same amount of memory at the same stride. Its writes
	// scribble over sector data, never over metadata.
	area, err := m.Slice(8192, int64(nlba)*4096)
	if err != nil {
		b.Fatal(err)
	}
	bufs := make([][]byte, goroutines)
	iovs := make([][][]byte, goroutines)
	for w := range bufs {
		bufs[w] = make([]byte, 4096)
		iovs[w] = [][]byte{bufs[w]}
	}
	slots := nlba
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	// The baseline is the faster of two plain copies of the same blocks:
	// the built-in copy and pmem.Copy (REP MOVSB where the CPU has fast
	// strings), the routine the engine itself copies sector data with.
	plain := func(move func(dst, src []byte) int) time.Duration {
		return parallel(goroutines, b.N, func(w, i int) {
			o := (i * 7919 % slots) * 4096
			if write {
				move(area[o:o+4096], bufs[w])
			} else {
				move(bufs[w], area[o:o+4096])
			}
		})
	}
	builtin := plain(func(dst, src []byte) int { return copy(dst, src) })
	memcpy := min(builtin, plain(pmem.Copy))
	// Each goroutine either takes a lane per I/O (Device.ReadV/WriteV) or
	// owns one for the whole run, as a vhost queue does.
	type disk interface {
		ReadV(uint64, [][]byte) error
		WriteV(uint64, [][]byte) error
	}
	disks := make([]disk, goroutines)
	for w := range disks {
		disks[w] = d
		if ownLanes {
			ln, err := d.AcquireLane()
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Release()
			disks[w] = ln
		}
	}
	engine := parallel(goroutines, b.N, func(w, i int) {
		lba := uint64(i * 7919 % nlba)
		var err error
		if write {
			err = disks[w].WriteV(lba, iovs[w])
		} else {
			err = disks[w].ReadV(lba, iovs[w])
		}
		if err != nil {
			b.Error(err)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(engine.Nanoseconds())/float64(b.N), "btt-ns/op")
	b.ReportMetric(float64(memcpy.Nanoseconds())/float64(b.N), "memcpy-ns/op")
	b.ReportMetric(float64(memcpy)/float64(engine), "x_memcpy")
	b.ReportMetric(float64(builtin)/float64(engine), "x_builtin")
}

func BenchmarkWrite4KiB1Goroutine(b *testing.B)  { benchEngine(b, 1, true, false) }
func BenchmarkWrite4KiB2Goroutines(b *testing.B) { benchEngine(b, 2, true, false) }
func BenchmarkRead4KiB1Goroutine(b *testing.B)   { benchEngine(b, 1, false, false) }
func BenchmarkRead4KiB2Goroutines(b *testing.B)  { benchEngine(b, 2, false, false) }

// With a lane owned per goroutine, as each vhost queue owns one.
func BenchmarkWrite4KiB1GoroutineOwnLane(b *testing.B)  { benchEngine(b, 1, true, true) }
func BenchmarkWrite4KiB2GoroutinesOwnLane(b *testing.B) { benchEngine(b, 2, true, true) }
func BenchmarkRead4KiB1GoroutineOwnLane(b *testing.B)   { benchEngine(b, 1, false, true) }
func BenchmarkRead4KiB2GoroutinesOwnLane(b *testing.B)  { benchEngine(b, 2, false, true) }

// BenchmarkRead128KiBScattered reads 32 consecutive sectors at a time
// after random writes have scattered the map, so each sector's block is
// somewhere else in the data area, as on a disk that has been in use. The
// baseline copies 32 blocks from as many random slots of the same area
// into the same 128 KiB buffer, with the faster plain copy.
func BenchmarkRead128KiBScattered(b *testing.B) {
	const sectors = 32
	// 1 GiB, the size bench-compare serves: its block and page-table
	// walks miss the CPU caches as a disk's do.
	m, d := benchDevice(b, 1<<30)
	nlba := int(d.NumSectors())
	area, err := m.Slice(8192, int64(nlba)*4096)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	one := [][]byte{make([]byte, 4096)}
	for range nlba {
		if err := d.WriteV(uint64(rng.IntN(nlba)), one); err != nil {
			b.Fatal(err)
		}
	}
	ln, err := d.AcquireLane()
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Release()
	buf := make([]byte, sectors*4096)
	iov := [][]byte{buf}
	starts := make([]uint64, 4096)
	for i := range starts {
		starts[i] = uint64(rng.IntN(nlba - sectors))
	}
	b.SetBytes(sectors * 4096)
	b.ReportAllocs()
	b.ResetTimer()
	plain := func(move func(dst, src []byte) int) time.Duration {
		start := time.Now()
		for i := range b.N {
			for k := range sectors {
				o := ((i*sectors + k) * 7919 % nlba) * 4096
				move(buf[k*4096:(k+1)*4096], area[o:o+4096])
			}
		}
		return time.Since(start)
	}
	memcpy := min(plain(func(dst, src []byte) int { return copy(dst, src) }), plain(pmem.Copy))
	start := time.Now()
	for i := range b.N {
		if err := ln.ReadV(starts[i%len(starts)], iov); err != nil {
			b.Fatal(err)
		}
	}
	engine := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(engine.Nanoseconds())/float64(b.N), "btt-ns/op")
	b.ReportMetric(float64(memcpy.Nanoseconds())/float64(b.N), "memcpy-ns/op")
	b.ReportMetric(float64(memcpy)/float64(engine), "x_memcpy")
}

// The 128 KiB sequential benchmarks read or write 32 consecutive sectors a
// request, over a lane owned per goroutine as a vhost queue owns one, in
// the page-cache flush mode. "Fresh" is a newly formatted image whose
// every sector was written once in order, so LBA n sits in a block next
// to LBA n+1's for most n; "Scattered" comes after one random write per
// sector, as on a disk in use (and in bench-compare, whose 128 KiB rows
// run after the 4 KiB random-write rows). The baseline is one plain copy
// of the whole 128 KiB at the same offsets of the data area: what a
// back-end without a BTT copies.
func BenchmarkRead128KiBFresh1Goroutine(b *testing.B)      { bench128(b, 1, false, false) }
func BenchmarkRead128KiBFresh2Goroutines(b *testing.B)     { bench128(b, 2, false, false) }
func BenchmarkRead128KiBScattered1Goroutine(b *testing.B)  { bench128(b, 1, false, true) }
func BenchmarkRead128KiBScattered2Goroutines(b *testing.B) { bench128(b, 2, false, true) }
func BenchmarkWrite128KiBFresh1Goroutine(b *testing.B)     { bench128(b, 1, true, false) }
func BenchmarkWrite128KiBFresh2Goroutines(b *testing.B)    { bench128(b, 2, true, false) }
func BenchmarkWrite128KiBScattered1Goroutine(b *testing.B) { bench128(b, 1, true, true) }
func BenchmarkWrite128KiBScattered2Goroutines(b *testing.B) {
	bench128(b, 2, true, true)
}

func bench128(b *testing.B, goroutines int, write, scattered bool) {
	const sectors = 32
	// 256 MiB: eight times the L3, so blocks and map come from DRAM.
	m, d := benchDevice(b, 256<<20)
	nlba := int(d.NumSectors())
	area, err := m.Slice(8192, int64(nlba)*4096)
	if err != nil {
		b.Fatal(err)
	}
	if scattered {
		rng := rand.New(rand.NewPCG(1, 2))
		one := [][]byte{make([]byte, 4096)}
		for range nlba {
			if err := d.WriteV(uint64(rng.IntN(nlba)), one); err != nil {
				b.Fatal(err)
			}
		}
	}
	lanes := make([]*btt.Lane, goroutines)
	bufs := make([][]byte, goroutines)
	iovs := make([][][]byte, goroutines)
	for w := range lanes {
		if lanes[w], err = d.AcquireLane(); err != nil {
			b.Fatal(err)
		}
		defer lanes[w].Release()
		bufs[w] = make([]byte, sectors*4096)
		iovs[w] = [][]byte{bufs[w]}
	}
	// Each goroutine streams through its own part of the disk, 128 KiB a
	// request, as a sequential job per queue does.
	runs := nlba / sectors / goroutines
	start := func(w, i int) int { return (w*runs + i/goroutines%runs) * sectors }
	b.SetBytes(sectors * 4096)
	b.ReportAllocs()
	b.ResetTimer()
	memcpy := parallel(goroutines, b.N, func(w, i int) {
		o := start(w, i) * 4096
		if write {
			pmem.Copy(area[o:o+sectors*4096], bufs[w])
		} else {
			pmem.Copy(bufs[w], area[o:o+sectors*4096])
		}
	})
	engine := parallel(goroutines, b.N, func(w, i int) {
		lba := uint64(start(w, i))
		var err error
		if write {
			err = lanes[w].WriteV(lba, iovs[w])
		} else {
			err = lanes[w].ReadV(lba, iovs[w])
		}
		if err != nil {
			b.Error(err)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(engine.Nanoseconds())/float64(b.N), "btt-ns/op")
	b.ReportMetric(float64(memcpy.Nanoseconds())/float64(b.N), "memcpy-ns/op")
	b.ReportMetric(float64(memcpy)/float64(engine), "x_memcpy")
}
