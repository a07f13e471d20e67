package conformance

import (
	"fmt"
	"strings"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// handshakeCases are the messages QEMU sends before any ring exists, on a
// connection of their own.
var handshakeCases = []Case{
	{"handshake/get-features", frontEndMessage + ": VHOST_USER_GET_FEATURES"},
	{"handshake/protocol-features", frontEndMessage + ": VHOST_USER_GET_PROTOCOL_FEATURES"},
	{"handshake/reply-ack", `vhost-user "VHOST_USER_PROTOCOL_F_REPLY_ACK"`},
	{"handshake/get-queue-num", `vhost-user "Multiple queue support": VHOST_USER_GET_QUEUE_NUM`},
	{"handshake/set-features", frontEndMessage + ": VHOST_USER_SET_FEATURES"},
}

func checkHandshake(s *suite) {
	names := caseNames(handshakeCases)
	c, err := frontend.Dial(s.socket)
	if err != nil {
		for _, n := range names {
			s.record(n, errFinding("dial", err))
		}
		return
	}
	defer c.Close()
	c.Timeout = s.timeout()
	f, err := c.GetU64(vhostuser.ReqGetFeatures)
	switch {
	case err != nil:
		s.record(names[0], errFinding("GET_FEATURES", err))
	case f&virtio.FVersion1 == 0:
		s.record(names[0], failf("VIRTIO_F_VERSION_1 not offered (%#x)", f))
	case f&vhostuser.FeatureProtocolFeatures == 0:
		s.record(names[0], failf("VHOST_USER_F_PROTOCOL_FEATURES not offered (%#x): no GET_CONFIG", f))
	default:
		s.record(names[0], passf("%#x", f))
	}
	p, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
	switch {
	case err != nil:
		s.record(names[1], errFinding("GET_PROTOCOL_FEATURES", err))
	case p&vhostuser.ProtoConfig == 0:
		s.record(names[1], failf("PROTOCOL_F_CONFIG not offered (QEMU's vhost-user-blk needs it): %s", protocolNames(p)))
	default:
		s.record(names[1], passf("%s", protocolNames(p)))
	}
	want := p & (vhostuser.ProtoMQ | vhostuser.ProtoReplyAck | vhostuser.ProtoConfig | vhostuser.ProtoConfigureMemSlots)
	if err := c.SetU64(vhostuser.ReqSetProtocolFeatures, want); err != nil {
		s.record(names[2], errFinding("SET_PROTOCOL_FEATURES", err))
	} else if want&vhostuser.ProtoReplyAck == 0 {
		s.record(names[2], s.notOffered("PROTOCOL_F_REPLY_ACK"))
	} else {
		c.SetProtocolFeatures(want) // SET_OWNER now asks for an ack
		if _, err := c.Call(vhostuser.ReqSetOwner, nil, nil); err != nil {
			s.record(names[2], errFinding("SET_OWNER with NEED_REPLY", err))
		} else {
			s.record(names[2], passf("SET_OWNER acked 0"))
		}
	}
	if want&vhostuser.ProtoMQ == 0 {
		s.record(names[3], s.notOffered("PROTOCOL_F_MQ"))
	} else if n, err := c.GetU64(vhostuser.ReqGetQueueNum); err != nil {
		s.record(names[3], errFinding("GET_QUEUE_NUM", err))
	} else if n < 1 || n > 1024 {
		s.record(names[3], failf("GET_QUEUE_NUM = %d", n))
	} else {
		s.record(names[3], passf("%d queues", n))
	}
	if err := c.SetU64(vhostuser.ReqSetFeatures, f&(virtio.FVersion1|vhostuser.FeatureProtocolFeatures|virtio.BlkFFlush|virtio.BlkFBlkSize)); err != nil {
		s.record(names[4], errFinding("SET_FEATURES", err))
	} else if _, err := c.GetU64(vhostuser.ReqGetFeatures); err != nil {
		s.record(names[4], errFinding("GET_FEATURES after SET_FEATURES", err))
	} else {
		s.record(names[4], pass())
	}
}

func protocolNames(p uint64) string {
	names := map[uint64]string{vhostuser.ProtoMQ: "MQ", vhostuser.ProtoLogSHMFD: "LOG_SHMFD", vhostuser.ProtoReplyAck: "REPLY_ACK",
		vhostuser.ProtoBackendReq: "BACKEND_REQ", vhostuser.ProtoConfig: "CONFIG", vhostuser.ProtoInflightSHMFD: "INFLIGHT_SHMFD",
		vhostuser.ProtoResetDevice: "RESET_DEVICE", vhostuser.ProtoInbandNotify: "INBAND_NOTIFICATIONS",
		vhostuser.ProtoConfigureMemSlots: "CONFIGURE_MEM_SLOTS", vhostuser.ProtoStatus: "STATUS"}
	var out []string
	for bit := 0; bit < 64; bit++ {
		if p&(1<<bit) == 0 {
			continue
		}
		if n, ok := names[1<<bit]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("bit%d", bit))
		}
	}
	return strings.Join(out, " ")
}
