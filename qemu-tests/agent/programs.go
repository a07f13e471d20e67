package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// spawned are the programs spawn started, by name, until stop.
var spawned = map[string]*background{}

type background struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // Wait's, once done is closed
}

// programEnv is the environment of every program the agent runs: a shell's
// PATH and nothing else, so that a guest run does not depend on what the
// kernel put in init's environment.
var programEnv = []string{"PATH=/sbin:/bin:/usr/sbin:/usr/bin"}

// command builds argv with its standard output sent to a guest file when
// the step names one (Stdout); closeFiles releases it.
func command(st agentproto.Step) (cmd *exec.Cmd, closeFiles func(), err error) {
	if len(st.Argv) == 0 {
		return nil, nil, fmt.Errorf("%s without argv", st.Op)
	}
	cmd = exec.Command(st.Argv[0], st.Argv[1:]...)
	cmd.Env = programEnv
	if st.Stdout == "" {
		return cmd, func() {}, nil
	}
	f, err := os.OpenFile(st.Stdout, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, err
	}
	cmd.Stdout = f
	return cmd, func() { f.Close() }, nil
}

func execute(st agentproto.Step) (agentproto.ExecData, error) {
	cmd, closeFiles, err := command(st)
	if err != nil {
		return agentproto.ExecData{}, err
	}
	defer closeFiles()
	var out bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &out
	}
	cmd.Stderr = &out
	err = cmd.Run()
	d := agentproto.ExecData{Output: out.String()}
	if cmd.ProcessState != nil {
		d.Exit = cmd.ProcessState.ExitCode()
	}
	if err != nil {
		return d, fmt.Errorf("%s: %w", strings.Join(st.Argv, " "), err)
	}
	return d, nil
}

// spawn starts a program that outlives the step, a back-end serving while
// later steps drive it; its stdout and stderr go to the log file Path,
// which stop reports.
func spawn(st agentproto.Step) (agentproto.SpawnData, error) {
	if st.Name == "" || st.Path == "" {
		return agentproto.SpawnData{}, errors.New("spawn needs a name and a log path")
	}
	if _, ok := spawned[st.Name]; ok {
		return agentproto.SpawnData{}, fmt.Errorf("%s is already running", st.Name)
	}
	cmd, closeFiles, err := command(st)
	if err != nil {
		return agentproto.SpawnData{}, err
	}
	log, err := os.OpenFile(st.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		closeFiles()
		return agentproto.SpawnData{}, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = log
	}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		closeFiles()
		log.Close()
		return agentproto.SpawnData{}, fmt.Errorf("%s: %w", strings.Join(st.Argv, " "), err)
	}
	b := &background{cmd: cmd, log: st.Path, done: make(chan struct{})}
	go func() {
		b.err = cmd.Wait()
		closeFiles()
		log.Close()
		close(b.done)
	}()
	spawned[st.Name] = b
	return agentproto.SpawnData{PID: cmd.Process.Pid}, nil
}

var signals = map[string]syscall.Signal{"TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL}

// stop signals a spawned program and waits for it. After TERM or INT it
// must exit 0 (a clean shutdown); after KILL it must have died of the
// signal. Either way its log is reported.
func stop(st agentproto.Step) (agentproto.ExecData, error) {
	b, ok := spawned[st.Name]
	if !ok {
		return agentproto.ExecData{}, fmt.Errorf("no spawned program %q", st.Name)
	}
	delete(spawned, st.Name)
	sig, ok := signals[st.Value]
	if !ok {
		return agentproto.ExecData{}, fmt.Errorf("signal %q: want TERM, INT or KILL", st.Value)
	}
	timeout := time.Duration(st.TimeoutMS) * time.Millisecond
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	var early error
	select {
	case <-b.done:
		early = fmt.Errorf("%s had exited before the %s: %v", st.Name, st.Value, b.err)
	default:
		if err := b.cmd.Process.Signal(sig); err != nil {
			return agentproto.ExecData{}, fmt.Errorf("signal %s: %w", st.Name, err)
		}
		select {
		case <-b.done:
		case <-time.After(timeout):
			_ = b.cmd.Process.Kill()
			<-b.done
			early = fmt.Errorf("%s did not exit within %v of the %s", st.Name, timeout, st.Value)
		}
	}
	d := agentproto.ExecData{Exit: b.cmd.ProcessState.ExitCode(), Output: readLog(b.log)}
	if early != nil {
		return d, early
	}
	ws, _ := b.cmd.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case sig == syscall.SIGKILL && !(ws.Signaled() && ws.Signal() == syscall.SIGKILL):
		return d, fmt.Errorf("%s: %v, not killed by SIGKILL", st.Name, b.cmd.ProcessState)
	case sig != syscall.SIGKILL && b.err != nil:
		return d, fmt.Errorf("%s after SIG%s: %w", st.Name, st.Value, b.err)
	}
	return d, nil
}

// killSpawned SIGKILLs a spawned program, as a crash would, waits until it
// is gone and returns its log.
func killSpawned(name string) (string, error) {
	b, ok := spawned[name]
	if !ok {
		return "", fmt.Errorf("no spawned program %q", name)
	}
	delete(spawned, name)
	select {
	case <-b.done:
		return readLog(b.log), fmt.Errorf("%s had exited before the SIGKILL: %v", name, b.err)
	default:
	}
	if err := b.cmd.Process.Kill(); err != nil {
		return "", fmt.Errorf("kill %s: %w", name, err)
	}
	<-b.done
	return readLog(b.log), nil
}

// readLog is a log file's content, its head and tail when it is long: a
// report line has to stay a reasonable size.
func readLog(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", path, err)
	}
	const keep = 16 << 10
	if len(b) > 2*keep {
		return string(b[:keep]) + fmt.Sprintf("\n... %d bytes ...\n", len(b)-2*keep) + string(b[len(b)-keep:])
	}
	return string(b)
}
