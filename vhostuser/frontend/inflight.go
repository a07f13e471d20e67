package frontend

import (
	"fmt"
	"time"

	"github.com/nvblk/nvblk/vhostuser"
	"golang.org/x/sys/unix"
)

// GetInflightFD asks the back-end for an inflight region of numQueues
// queues of queueSize entries (GET_INFLIGHT_FD). The fd that comes with the
// reply is the caller's; it is -1 when the back-end answered with mmap size
// 0 (no tracking).
func (c *Conn) GetInflightFD(numQueues, queueSize uint16) (vhostuser.Inflight, int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	req := vhostuser.Inflight{NumQueues: numQueues, QueueSize: queueSize}
	msg := vhostuser.EncodeMessage(vhostuser.ReqGetInflightFD, vhostuser.FlagVersion, req.Encode())
	if err := vhostuser.WriteMessage(c.c, msg, nil); err != nil {
		return vhostuser.Inflight{}, -1, fmt.Errorf("frontend: GET_INFLIGHT_FD: %w", err)
	}
	t := c.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	c.c.SetReadDeadline(time.Now().Add(t))
	defer c.c.SetReadDeadline(time.Time{})
	hdr, payload, fds, err := vhostuser.ReadMessage(c.c)
	if err != nil {
		return vhostuser.Inflight{}, -1, fmt.Errorf("frontend: GET_INFLIGHT_FD reply: %w", err)
	}
	fail := func(err error) (vhostuser.Inflight, int, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return vhostuser.Inflight{}, -1, err
	}
	if hdr.Request != vhostuser.ReqGetInflightFD || hdr.Flags != vhostuser.FlagVersion|vhostuser.FlagReply {
		return fail(fmt.Errorf("%w: GET_INFLIGHT_FD answered by %v flags %#x", ErrBadReply, hdr.Request, hdr.Flags))
	}
	inf, err := vhostuser.DecodeInflight(payload)
	if err != nil {
		return fail(fmt.Errorf("%w: GET_INFLIGHT_FD: %v", ErrBadReply, err))
	}
	switch {
	case inf.MmapSize == 0 && len(fds) == 0:
		return inf, -1, nil
	case inf.MmapSize == 0 || len(fds) != 1:
		return fail(fmt.Errorf("%w: GET_INFLIGHT_FD: %d bytes with %d fds", ErrBadReply, inf.MmapSize, len(fds)))
	}
	return inf, fds[0], nil
}

// SetInflightFD hands an inflight region to the back-end
// (SET_INFLIGHT_FD); fd stays the caller's.
func (c *Conn) SetInflightFD(inf vhostuser.Inflight, fd int) error {
	_, err := c.Call(vhostuser.ReqSetInflightFD, inf.Encode(), []int{fd})
	return err
}

// setupInflight does what QEMU's vhost-user-blk does before starting the
// rings: the first time, GET_INFLIGHT_FD (the region is kept, like QEMU
// keeps it, for the back-ends that come after); every time,
// SET_INFLIGHT_FD.
func (d *Device) setupInflight(queues, queueSize uint16) error {
	if d.Protocol&vhostuser.ProtoInflightSHMFD == 0 {
		return nil
	}
	if d.InflightFD < 0 {
		inf, fd, err := d.Conn.GetInflightFD(queues, queueSize)
		if err != nil {
			return err
		}
		if fd < 0 {
			return nil
		}
		d.Inflight, d.InflightFD = inf, fd
	}
	return d.Conn.SetInflightFD(d.Inflight, d.InflightFD)
}

// Resume attaches the device, with the requests it has in flight, to a new
// back-end on path after the old one died: what QEMU's vhost-user-blk does
// on reconnect. It negotiates the same features, hands over the inflight
// region, the memory table and every ring with its used index as the base
// (the only index a front-end knows once the back-end is gone); the
// back-end resubmits what the old one had taken.
func (d *Device) Resume(path string) error {
	c, err := Dial(path)
	if err != nil {
		return err
	}
	c.Timeout = d.Conn.Timeout
	fail := func(err error) error {
		c.Close()
		return fmt.Errorf("frontend: resume on %s: %w", path, err)
	}
	offered, err := c.GetU64(vhostuser.ReqGetFeatures)
	if err != nil {
		return fail(err)
	}
	if offered&d.Features != d.Features {
		return fail(fmt.Errorf("back-end offers %#x, lacking %#x", offered, d.Features&^offered))
	}
	if d.Features&vhostuser.FeatureProtocolFeatures != 0 {
		p, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
		if err != nil {
			return fail(err)
		}
		if p&d.Protocol != d.Protocol {
			return fail(fmt.Errorf("back-end protocol features %#x lack %#x", p, d.Protocol&^p))
		}
		if err := c.SetU64(vhostuser.ReqSetProtocolFeatures, d.Protocol); err != nil {
			return fail(err)
		}
		c.SetProtocolFeatures(d.Protocol)
	}
	if _, err := c.Call(vhostuser.ReqSetOwner, nil, nil); err != nil {
		return fail(err)
	}
	if err := c.SetU64(vhostuser.ReqSetFeatures, d.Features); err != nil {
		return fail(err)
	}
	old := d.Conn
	d.Conn = c
	old.Close()
	if len(d.Queues) > 0 {
		if err := d.setupInflight(uint16(len(d.Queues)), d.Queues[0].Ring.Size); err != nil {
			return fmt.Errorf("frontend: resume on %s: %w", path, err)
		}
	}
	if err := d.sendMemory(false); err != nil {
		return fmt.Errorf("frontend: resume on %s: %w", path, err)
	}
	for _, q := range d.Queues {
		if err := d.startRing(q, q.Ring.ResumeBase(), true); err != nil {
			return fmt.Errorf("frontend: resume on %s: %w", path, err)
		}
	}
	return nil
}

// Head is the descriptor the request was submitted at (its used element's
// id), valid once submitted.
func (r *Request) Head() uint16 { return r.descs[0] }
