package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

type cpuSample struct {
	self    time.Duration // this process, from getrusage (µs precision)
	backend time.Duration // the back-end's, from /proc (10 ms precision)
}

func takeSample(pid int) (cpuSample, error) {
	var s cpuSample
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return s, fmt.Errorf("loadgen: getrusage: %w", err)
	}
	s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if pid > 0 {
		var err error
		if s.backend, err = ProcessCPU(pid); err != nil {
			return s, err
		}
	}
	return s, nil
}

// ProcessCPU is the user+system CPU time pid has used so far, from
// /proc/PID/stat.
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("loadgen: backend CPU: %w", err)
	}
	return parseStat(b)
}

// parseStat reads utime+stime (fields 14 and 15) of a /proc/PID/stat line.
// The command name (field 2) is parenthesised and may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("loadgen: /proc stat %q: no command name", b)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state): utime is field 14, f[11].
	if len(f) < 13 {
		return 0, fmt.Errorf("loadgen: /proc stat has %d fields after the name", len(f))
	}
	var ticks uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(string(s), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("loadgen: /proc stat time %q: %w", s, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
