package guest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Backend is a vhost-user-blk server process a guest attaches to: `nvblk
// serve` or qemu-storage-daemon.
type Backend struct {
	Name   string // in its messages: "nvblk serve", "nvblk serve #3", ...
	Socket string
	cmd    *exec.Cmd
	mu     sync.Mutex
	log    bytes.Buffer // stdout and stderr
	exited chan struct{}
	err    error
}

func (b *Backend) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.log.Write(p)
}

// Output is what the process printed so far.
func (b *Backend) Output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.log.String()
}

// Serve starts `nvblk serve` of image on sock and returns once it listens
// (it prints the QEMU options to attach then), so that QEMU never races
// it.
func (s *Suite) Serve(t testing.TB, name, sock, image string, extra ...string) *Backend {
	t.Helper()
	args := append([]string{"serve", "--socket-path", sock, "--blk-file", image}, extra...)
	return StartBackend(t, name, sock, exec.Command(s.CLI(t), args...), "# attach ")
}

// StartBackend runs cmd and waits until it is ready: ready is a line it
// prints once listening, or, when empty, its socket accepting connections
// (the probe connection is one the daemon sees close at once). It is
// stopped (SIGTERM, then SIGKILL) when the test ends, and its output is
// kept in the test log if the test fails.
func StartBackend(t testing.TB, name, sock string, cmd *exec.Cmd, ready string) *Backend {
	t.Helper()
	b := &Backend{Name: name, Socket: sock, cmd: cmd, exited: make(chan struct{})}
	t.Logf("%s command line: %s", name, strings.Join(cmd.Args, " "))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = b
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			fmt.Fprintln(b, sc.Text())
			if ready != "" && !signalled && strings.HasPrefix(sc.Text(), ready) {
				signalled = true
				close(listening)
			}
		}
		_, _ = io.Copy(b, stdout)
		b.err = cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(func() {
		b.Stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, b.Output())
		}
	})
	deadline := time.After(30 * time.Second)
	for {
		if ready == "" {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				return b
			}
		}
		select {
		case <-listening:
			return b
		case <-b.exited:
			t.Fatalf("%s exited before listening: %v\n%s", name, b.err, b.Output())
		case <-deadline:
			t.Fatalf("%s not listening on %s after 30 s\n%s", name, sock, b.Output())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM and waits for the exit, killing after 10 s; it
// returns the process's exit error.
func (b *Backend) Stop() error {
	select {
	case <-b.exited:
		return b.err
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.exited
		return fmt.Errorf("%s ignored SIGTERM for 10 s: %w", b.Name, b.err)
	}
	return b.err
}

// StopClean stops the backend and fails the test unless it was still
// serving and then shut down cleanly: nvblk flushes and closes the image on
// SIGTERM, and only then may the image tools open it.
func (b *Backend) StopClean(t testing.TB) {
	t.Helper()
	select {
	case <-b.exited:
		t.Fatalf("%s exited before SIGTERM: %v\n%s", b.Name, b.err, b.Output())
	default:
	}
	if err := b.Stop(); err != nil {
		t.Fatalf("%s did not shut down cleanly: %v\n%s", b.Name, err, b.Output())
	}
}

// Freeze stops the backend with SIGSTOP and returns once every one of
// its threads is stopped, so that the memory it shares holds still until
// Thaw or Kill.
func (b *Backend) Freeze(t testing.TB) {
	t.Helper()
	pid := b.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %s: %v", b.Name, err)
	}
	// kill(2) returns before the group stop completes: a thread running
	// on another CPU stops on its way back to user space.
	deadline := time.Now().Add(5 * time.Second)
	for !allThreadsStopped(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not stopped 5 s after SIGSTOP", b.Name)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// Thaw resumes a frozen backend (SIGCONT).
func (b *Backend) Thaw(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(b.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT %s: %v", b.Name, err)
	}
}

// allThreadsStopped says whether every thread of pid is in the stopped
// state (T in /proc/PID/task/TID/stat).
func allThreadsStopped(pid int) bool {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
		if err != nil {
			return false
		}
		// "TID (comm) STATE ...": comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || i+2 >= len(stat) || stat[i+2] != 'T' {
			return false
		}
	}
	return true
}

// Kill ends the backend with SIGKILL: no drain, no goodbye.
func (b *Backend) Kill(t testing.TB) {
	t.Helper()
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL %s: %v", b.Name, err)
	}
	<-b.exited
}
