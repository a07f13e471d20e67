package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// stepIndex is the script step running; progress reports carry it.
var stepIndex int

// progress sends a report while a step runs (set by main).
var progress func(agentproto.Report)

// progressMu keeps writers' report lines whole on the serial port.
var progressMu sync.Mutex

func (a *agent) progress(r agentproto.Report) {
	progressMu.Lock()
	defer progressMu.Unlock()
	a.report(r)
}

// seqWrite writes sector LBA+i with Pattern(Seed, LBA+i) for i < Count,
// each sector once, with O_DIRECT: Workers goroutines take i = w, w+W, ...
// so that W writes are in flight at a time. After every Chunk of its
// writes a writer fsyncs the device and reports the sectors it saw
// acknowledged since its last report; a write error ends the step. With
// Pin, writer w runs pinned to CPU w mod NumCPU, so that its writes
// travel on that CPU's hardware queue.
func seqWrite(st agentproto.Step) (agentproto.SeqWriteData, error) {
	var d agentproto.SeqWriteData
	workers, chunk := max(st.Workers, 1), max(st.Chunk, 1)
	if st.SectorSize == 0 || st.Count == 0 {
		return d, errors.New("seq-write needs sector_size and count")
	}
	type result struct {
		fsyncs  int
		slowest time.Duration
		err     error
	}
	results := make([]result, workers)
	d.Writers = make([]agentproto.WorkerData, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, wd := &results[w], &d.Writers[w]
			*wd = agentproto.WorkerData{Worker: w, Pinned: -1}
			if st.Pin {
				wd.Pinned = w % runtime.NumCPU()
				if r.err = pinThread(wd.Pinned); r.err != nil {
					r.err = fmt.Errorf("writer %d: %w", w, r.err)
					return
				}
			}
			r.fsyncs, r.slowest, r.err = seqWriter(st, w, workers, chunk, wd)
		}()
	}
	wg.Wait()
	var errs []error
	for i, r := range results {
		d.Sectors += d.Writers[i].Writes
		d.Fsyncs += r.fsyncs
		d.SlowestMS = max(d.SlowestMS, r.slowest.Milliseconds())
		errs = append(errs, r.err)
	}
	return d, errors.Join(errs...)
}

// seqWriter is writer w of seqWrite; it counts its writes in wd.
func seqWriter(st agentproto.Step, w, workers, chunk int, wd *agentproto.WorkerData) (fsyncs int, slowest time.Duration, err error) {
	f, err := os.OpenFile(st.Device, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf, err := alignedBuffer(st.SectorSize)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Munmap(buf)
	var acked []uint64
	report := func(synced bool) {
		if len(acked) == 0 {
			return
		}
		progress(agentproto.Report{Step: -1, Op: agentproto.OpProgress, OK: true,
			Data: mustJSON(agentproto.ProgressData{Step: stepIndex, Worker: w, LBAs: acked, Synced: synced})})
		acked = acked[:0]
	}
	defer report(false) // what completed before an error
	seen := map[int]bool{}
	for i := w; i < st.Count; i += workers {
		lba := st.LBA + uint64(i)
		copy(buf, agentproto.Pattern(st.Seed, lba, st.SectorSize))
		t0 := time.Now()
		if _, err := f.WriteAt(buf, int64(lba)*int64(st.SectorSize)); err != nil {
			return fsyncs, slowest, fmt.Errorf("writer %d: write lba %d: %w", w, lba, err)
		}
		slowest = max(slowest, time.Since(t0))
		wd.Writes++
		wd.LBAs++
		sawCPU(wd, seen)
		acked = append(acked, lba)
		if len(acked) == chunk {
			if err := f.Sync(); err != nil {
				return fsyncs, slowest, fmt.Errorf("writer %d: fsync after lba %d: %w", w, lba, err)
			}
			fsyncs++
			report(true)
		}
	}
	return fsyncs, slowest, nil
}
