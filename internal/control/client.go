package control

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// Call sends one request to the control socket at path and returns the
// reply; a reply with ok false is returned as an error.
func Call(path, cmd string, timeout time.Duration) (*Reply, error) {
	return Do(path, Request{Cmd: cmd}, timeout)
}

// Do is Call with a whole request: the disk commands' fields.
func Do(path string, req Request, timeout time.Duration) (*Reply, error) {
	cmd := req.Cmd
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, fmt.Errorf("control socket %s: sending %s: %w", path, cmd, err)
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("control socket %s: reading the %s reply: %w", path, cmd, err)
	}
	var r Reply
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("control socket %s: %s reply: %w", path, cmd, err)
	}
	if !r.OK {
		return &r, fmt.Errorf("control socket %s: %s: %s", path, cmd, r.Error)
	}
	return &r, nil
}
