package vhost

import (
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
)

// SessionInfo describes one front-end connection being served
// (Server.Sessions), for status pages and metrics. During a live migration
// there are two: the source QEMU's, running the guest with Logging on, and
// the destination's (-incoming), connected and waiting, its queues stopped.
type SessionInfo struct {
	// ID names the session: the "conn" field of its log lines, and what
	// Server.DetachSession takes. IDs count up from 1 and are not reused.
	ID uint64 `json:"id"`
	// PeerPID, PeerUID and PeerGID are the connecting process's, as the
	// kernel recorded them when it connected (SO_PEERCRED); PeerKnown is
	// false when the kernel did not say (all three are then 0).
	PeerKnown bool   `json:"peer_known"`
	PeerPID   int32  `json:"peer_pid"`
	PeerUID   uint32 `json:"peer_uid"`
	PeerGID   uint32 `json:"peer_gid"`
	// ConnectedAt is when the connection was accepted.
	ConnectedAt time.Time `json:"connected_at"`
	// Ready is set once a queue has started: the handshake is done.
	Ready bool `json:"ready"`
	// Features are the virtio (and vhost) feature bits the front-end set
	// (SET_FEATURES); ProtocolFeatures the vhost-user protocol bits.
	Features         uint64 `json:"features"`
	ProtocolFeatures uint64 `json:"protocol_features"`
	// Logging is true while the back-end marks its writes in a dirty log
	// for the front-end: VHOST_F_LOG_ALL set and a log given, a live
	// migration under way. LogBytes is the size of the log mapped
	// (SET_LOG_BASE), 0 without one; LogOutside counts marks that fell
	// past its end and were dropped (see log.go: expected 0).
	Logging    bool   `json:"dirty_logging"`
	LogBytes   uint64 `json:"dirty_log_bytes"`
	LogOutside uint64 `json:"dirty_log_outside"`
	// Stopped is set once the front-end, having started the device
	// (Ready), stopped every ring with GET_VRING_BASE and started none
	// since: QEMU's vhost_dev_stop, at a guest reset, a VM stop, and a
	// migration's switch-over (then with Logging still on).
	Stopped bool `json:"stopped"`
	// Queues are the session's rings and its own counters (QueueStats),
	// one per queue the device has, enabled or not.
	Queues []QueueStats `json:"queues"`
}

// Sessions returns the front-ends being served, oldest first. Like Stats it
// takes no session's lock, so a request stuck in the guest holds it up
// neither; what it shows of a session is as of that session's last
// request. A session being detached or closed is left out.
func (s *Server) Sessions() []SessionInfo {
	var out []SessionInfo
	for _, sess := range s.liveSessions() {
		qs, ok := sess.queueStats()
		v := sess.view.Load()
		if !ok || v == nil {
			continue
		}
		info := SessionInfo{
			ID: sess.id, PeerKnown: sess.peer.known, PeerPID: sess.peer.pid, PeerUID: sess.peer.uid, PeerGID: sess.peer.gid,
			ConnectedAt: sess.since, Ready: v.ready, Features: v.features, ProtocolFeatures: v.protocol,
			Logging:  v.features&vhostuser.FeatureLogAll != 0 && v.logSize != 0,
			LogBytes: v.logSize, LogOutside: sess.logOutside.Load(), Queues: qs,
			Stopped: v.ready && !v.anyStarted(),
		}
		out = append(out, info)
	}
	return out
}

func (v *sessionView) anyStarted() bool {
	for _, r := range v.rings {
		if r.started {
			return true
		}
	}
	return false
}

// peerCred is who is at the other end of a unix socket.
type peerCred struct {
	known    bool
	pid      int32
	uid, gid uint32
}

// peerOf asks the kernel who connected c (SO_PEERCRED); known is false
// when it cannot say.
func peerOf(c *net.UnixConn) peerCred {
	rc, err := c.SyscallConn()
	if err != nil {
		return peerCred{}
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return peerCred{}
	}
	return peerCred{known: true, pid: cred.Pid, uid: cred.Uid, gid: cred.Gid}
}
