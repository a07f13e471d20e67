package frontend

import (
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
)

// giveBackendChannel makes a socket pair and gives one end to the back-end
// with SET_BACKEND_REQ_FD, keeping the other as d.Backend.
func (d *Device) giveBackendChannel() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("frontend: back-end channel: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "backend-req")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return fmt.Errorf("frontend: back-end channel: %w", err)
	}
	d.Backend = c.(*net.UnixConn)
	_, err = d.Conn.Call(vhostuser.ReqSetBackendReqFD, nil, []int{fds[1]})
	unix.Close(fds[1]) // sent: the back-end has its own
	return err
}

// WaitConfigChange waits for the back-end's VHOST_USER_BACKEND_CONFIG_CHANGE_MSG,
// answers it when asked to (REPLY_ACK), and reads the config space again
// into d.Config, as QEMU does before it tells the guest.
func (d *Device) WaitConfigChange(timeout time.Duration) error {
	if d.Backend == nil {
		return fmt.Errorf("frontend: no back-end request channel (Options.BackendReq, PROTOCOL_F_BACKEND_REQ)")
	}
	hdr, payload, fds, err := vhostuser.ReadMessageTimeout(d.Backend, timeout)
	vhostuser.CloseFDs(fds)
	if err != nil {
		return fmt.Errorf("frontend: back-end request: %w", err)
	}
	if hdr.Request != vhostuser.BackendReqConfigChange || len(payload) != 0 {
		return fmt.Errorf("frontend: back-end request %v with %d payload bytes, want a config change", hdr.Request, len(payload))
	}
	cfg, err := d.Conn.GetConfig(0, uint32(len(d.Config)))
	if err != nil {
		return err
	}
	d.Config = cfg
	if hdr.Flags&vhostuser.FlagNeedReply != 0 {
		reply := vhostuser.EncodeMessage(vhostuser.BackendReqConfigChange, vhostuser.ReplyFlags, vhostuser.EncodeU64(0))
		if err := vhostuser.WriteMessage(d.Backend, reply, nil); err != nil {
			return fmt.Errorf("frontend: answering the config change: %w", err)
		}
	}
	return nil
}
