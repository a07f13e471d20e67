// Package systemd adopts the listening sockets systemd passes to a
// socket-activated service (sd_listen_fds(3)): LISTEN_PID names the
// process they are for, LISTEN_FDS how many there are, starting at fd 3.
package systemd

import (
	"fmt"
	"os"
	"strconv"
)

// ListenFDsStart is the first passed fd (SD_LISTEN_FDS_START).
const ListenFDsStart = 3

// ListenFDs returns the fds systemd passed to this process, or none when
// LISTEN_PID is unset or names another process (the variables were
// inherited from a parent). Like sd_listen_fds(1) it unsets the variables,
// so children do not see them, and marks the fds close-on-exec.
func ListenFDs() ([]int, error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if pid == "" {
		return nil, nil
	}
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	p, err := strconv.Atoi(pid)
	if err != nil {
		return nil, fmt.Errorf("LISTEN_PID=%q: %w", pid, err)
	}
	if p != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("LISTEN_FDS=%q: want a count of fds", fds)
	}
	out := make([]int, n)
	for i := range out {
		out[i] = ListenFDsStart + i
		closeOnExec(out[i])
	}
	return out, nil
}
