package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// streamWrite runs stream-write (see agentproto.OpStreamWrite): writers
// that keep overwriting their rings with sequence-stamped sectors, each
// write O_DSYNC (the guest sees it acknowledged only once the device
// flushed it) and read back at once, until told to stop; then each ring
// is read back whole. So every write is read twice: at once, and a ring
// later just before it is overwritten or at the end. It is meant to run while the machine migrates, so
// it checks everything itself: after a migration the harness can no
// longer look into the guest's past, only at what the guest reports.
func streamWrite(st agentproto.Step) (agentproto.StreamData, error) {
	var d agentproto.StreamData
	workers, chunk := max(st.Workers, 1), st.Chunk
	if chunk == 0 {
		chunk = 64
	}
	if st.SectorSize == 0 || st.Count < workers {
		return d, errors.New("stream-write needs sector_size and at least one sector per writer")
	}
	var stop atomic.Bool
	stopped := make(chan string, 1)
	if st.Path != "" {
		start, err := leadingCount(st.Path)
		if err != nil {
			return d, fmt.Errorf("stop signal: %w", err)
		}
		done := make(chan struct{})
		defer close(done)
		go func() {
			deadline := time.After(time.Duration(st.TimeoutMS) * time.Millisecond)
			for {
				select {
				case <-done:
					return
				case <-deadline:
					stopped <- "time"
					stop.Store(true)
					return
				case <-time.After(20 * time.Millisecond):
				}
				if n, err := leadingCount(st.Path); err == nil && n > start {
					stopped <- "signal"
					stop.Store(true)
					return
				}
			}
		}()
	} else {
		time.AfterFunc(time.Duration(st.TimeoutMS)*time.Millisecond, func() {
			stopped <- "time"
			stop.Store(true)
		})
	}

	per := st.Count / workers
	d.Writers = make([]agentproto.StreamWriter, workers)
	errs := make([]error, workers)
	slowest := make([]time.Duration, workers)
	var wg sync.WaitGroup
	for w := range workers {
		d.Writers[w] = agentproto.StreamWriter{Worker: w, LBA: st.LBA + uint64(w*per), Sectors: per}
		wg.Add(1)
		go func() {
			defer wg.Done()
			slowest[w], errs[w] = streamWriter(st, &d.Writers[w], chunk, &stop)
			if errs[w] != nil {
				stop.Store(true) // the others stop too: the step has failed
			}
		}()
	}
	wg.Wait()
	select {
	case d.Stopped = <-stopped:
	default:
		d.Stopped = "error"
	}
	for w := range workers {
		d.Writes += d.Writers[w].Writes
		d.Rechecked += d.Writers[w].Rechecked
		d.SlowestMS = max(d.SlowestMS, slowest[w].Milliseconds())
	}
	if err := errors.Join(errs...); err != nil {
		return d, err
	}
	if d.Stopped == "time" && st.Path != "" {
		return d, fmt.Errorf("no stop signal in %s within %d ms", st.Path, st.TimeoutMS)
	}
	for w := range workers {
		n, err := verifyRing(st, d.Writers[w])
		d.Verified += n
		if err != nil {
			return d, err
		}
	}
	return d, nil
}

// streamWriter is one writer of streamWrite; it counts its writes in wr.
func streamWriter(st agentproto.Step, wr *agentproto.StreamWriter, chunk int, stop *atomic.Bool) (time.Duration, error) {
	f, err := os.OpenFile(st.Device, os.O_RDWR|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf, err := alignedBuffer(2 * st.SectorSize)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(buf)
	out, in := buf[:st.SectorSize], buf[st.SectorSize:]
	var slowest time.Duration
	report := func() {
		progress(agentproto.Report{Step: -1, Op: agentproto.OpStreamProgress, OK: true,
			Data: mustJSON(agentproto.StreamProgressData{Step: stepIndex, Worker: wr.Worker, Writes: wr.Writes})})
	}
	for seq := uint64(0); !stop.Load(); seq++ {
		lba := wr.StreamSlot(seq)
		off := int64(lba) * int64(st.SectorSize)
		t0 := time.Now()
		// The write a ring ago, about to be overwritten: its last
		// chance to be read. A ring is seconds of writes, so right
		// after a migration these are the previous machine's.
		if seq >= uint64(wr.Sectors) {
			old := seq - uint64(wr.Sectors)
			if _, err := f.ReadAt(in, off); err != nil {
				return slowest, fmt.Errorf("writer %d: read seq %d at lba %d before overwriting it: %w", wr.Worker, old, lba, err)
			}
			if !bytes.Equal(in, agentproto.StreamSector(st.Seed, wr.Worker, old, lba, st.SectorSize)) {
				return slowest, fmt.Errorf("writer %d: lba %d, written with seq %d, reads back as %s before seq %d overwrites it",
					wr.Worker, lba, old, agentproto.DescribeStreamSector(in), seq)
			}
			wr.Rechecked++
		}
		copy(out, agentproto.StreamSector(st.Seed, wr.Worker, seq, lba, st.SectorSize))
		if _, err := f.WriteAt(out, off); err != nil {
			return slowest, fmt.Errorf("writer %d: write seq %d at lba %d: %w", wr.Worker, seq, lba, err)
		}
		if _, err := f.ReadAt(in, off); err != nil {
			return slowest, fmt.Errorf("writer %d: read back seq %d at lba %d: %w", wr.Worker, seq, lba, err)
		}
		slowest = max(slowest, time.Since(t0))
		if !bytes.Equal(in, out) {
			return slowest, fmt.Errorf("writer %d: lba %d, just written with seq %d, reads back as %s",
				wr.Worker, lba, seq, agentproto.DescribeStreamSector(in))
		}
		wr.Writes++
		if wr.Writes%chunk == 0 {
			report()
		}
	}
	report()
	return slowest, nil
}

// verifyRing reads back every slot of wr's ring that was written and
// checks it holds the last write there; it returns how many did.
func verifyRing(st agentproto.Step, wr agentproto.StreamWriter) (int, error) {
	f, err := os.OpenFile(st.Device, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	in, err := alignedBuffer(st.SectorSize)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(in)
	verified := 0
	var bad []string
	for i := range wr.Sectors {
		seq, ok := wr.LastSeq(i)
		if !ok {
			break
		}
		lba := wr.LBA + uint64(i)
		if _, err := f.ReadAt(in, int64(lba)*int64(st.SectorSize)); err != nil {
			return verified, fmt.Errorf("writer %d: verify lba %d: %w", wr.Worker, lba, err)
		}
		if !bytes.Equal(in, agentproto.StreamSector(st.Seed, wr.Worker, seq, lba, st.SectorSize)) {
			if len(bad) < 8 {
				bad = append(bad, fmt.Sprintf("lba %d holds %s, want seq %d", lba, agentproto.DescribeStreamSector(in), seq))
			}
			continue
		}
		verified++
	}
	if len(bad) > 0 {
		return verified, fmt.Errorf("writer %d: %d of its ring's written sectors do not hold their last write: %s",
			wr.Worker, min(wr.Writes, wr.Sectors)-verified, strings.Join(bad, "; "))
	}
	return verified, nil
}

// leadingCount is the number a file starts with, such as the count of
// /sys/firmware/acpi/interrupts/ff_pwr_btn ("       1  enabled").
func leadingCount(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0, fmt.Errorf("%s is empty", path)
	}
	return strconv.ParseUint(fields[0], 10, 64)
}
