package vhost

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Errors a request can fail with (sent back as a non-zero REPLY_ACK).
var (
	ErrUnsupported = errors.New("vhost: unsupported request")
	ErrBadVring    = errors.New("vhost: bad vring request")
	ErrBadFeatures = errors.New("vhost: feature bits not offered")
	ErrBadConfig   = errors.New("vhost: bad config access")
	// errDrop ends the connection after a request that failed in a way
	// the front-end would not see otherwise (a log refused mid-migration).
	errDrop = errors.New("vhost: the front-end would not see this refusal; dropping the connection")
)

// supportedProtocolFeatures are the protocol features the server offers
// always; migrationProtocolFeatures those it adds with Options.Migration.
const (
	supportedProtocolFeatures = vhostuser.ProtoMQ | vhostuser.ProtoReplyAck |
		vhostuser.ProtoConfig | vhostuser.ProtoConfigureMemSlots |
		vhostuser.ProtoResetDevice | vhostuser.ProtoStatus | vhostuser.ProtoInflightSHMFD |
		vhostuser.ProtoBackendReq
	migrationProtocolFeatures = vhostuser.ProtoLogSHMFD
)

// protocolFeatures are the protocol features this session offers.
func (s *session) protocolFeatures() uint64 {
	if s.srv.opts.Migration {
		return supportedProtocolFeatures | migrationProtocolFeatures
	}
	return supportedProtocolFeatures
}

// vringState is the part of a vring that describes the guest's ring rather
// than this connection: it is what a reconnecting front-end (INFLIGHT_SHMFD)
// would need back, and so is kept apart from fds and workers.
type vringState struct {
	num     uint32              // SET_VRING_NUM; 0 = unset
	addr    vhostuser.VringAddr // SET_VRING_ADDR, front-end user addresses
	addrSet bool
	base    uint16 // last avail idx: SET_VRING_BASE, refreshed when a worker stops
	// usedBase is a packed ring's used position (SET_VRING_BASE's high
	// half: index | wrap counter<<15), refreshed when a worker stops; a
	// split ring keeps its used index in guest memory.
	usedBase uint16
	enabled  bool // SET_VRING_ENABLE
}

// vring is one queue as this connection sees it.
type vring struct {
	vringState
	index    int
	kick     *os.File // owned; nil when polling or not yet set
	kickPoll bool     // SET_VRING_KICK with VringNoFD
	started  bool     // kick received, until GET_VRING_BASE
	// call and errFD are written by the session (under session.mu) and
	// loaded by the worker; a replaced file is closed by the session, which
	// Go makes safe against a concurrent Write.
	call  atomic.Pointer[os.File]
	errFD atomic.Pointer[os.File]
	// broken is set by the worker when the ring is unusable (virtq.ErrBroken)
	// and cleared by a device reset.
	broken atomic.Bool
	w      *worker // running worker, or nil
}

// session serves one front-end connection.
type session struct {
	srv   *Server
	conn  *net.UnixConn
	log   *logrus.Entry
	id    uint64    // the "conn" of its log lines (SessionInfo.ID)
	peer  peerCred  // who connected, as the kernel says (SO_PEERCRED)
	since time.Time // when it was accepted
	// counters are this session's queues' statistics (stats.go), folded
	// into the server's totals when it ends. Only the queue's worker
	// writes them, and a session runs at most one worker per queue.
	counters []queueCounters
	// view is what Server.Stats and Sessions show of the session,
	// published after each request so that neither takes mu, which a
	// request can hold for as long as a stuck guest request takes
	// (stopping a queue waits for it). closing is set once the connection
	// is going (Detach, close): Stats then reports it gone.
	view    atomic.Pointer[sessionView]
	closing atomic.Bool
	// logOutside counts dirty-log marks dropped past a log's end (log.go).
	logOutside atomic.Uint64

	// backendMu guards backend, the channel of SET_BACKEND_REQ_FD, on
	// which the back-end sends requests of its own (a config change). It
	// is taken without mu: the front-end answers such a request only after
	// requests of its own on the main channel (GET_CONFIG), which need mu.
	// Lock order: mu -> backendMu.
	backendMu sync.Mutex
	backend   *net.UnixConn

	mu       sync.Mutex // guards everything below; held while one request is handled
	features uint64     // SET_FEATURES
	protocol uint64     // SET_PROTOCOL_FEATURES
	mem      *memTable
	vrings   []*vring
	status   uint8           // SET_STATUS
	inflight *inflightRegion // GET/SET_INFLIGHT_FD; nil: no tracking (inflight.go)
	// dlog is the dirty log of SET_LOG_BASE (log.go), nil without one;
	// it is marked while features has VHOST_F_LOG_ALL. logRefused is set
	// when the last SET_LOG_BASE was refused: QEMU does not look at that
	// reply, so SET_FEATURES turning logging on is refused instead, which
	// QEMU does see, and the migration fails rather than copy a guest
	// whose writes went unlogged.
	dlog       *dirtyLog
	logRefused bool
	closed     bool
	ready      bool // a queue has started: the handshake is done (logged once)
	// lastRequest is the last request handled (0: none yet), for
	// the log when the front-end leaves before the handshake is done.
	lastRequest vhostuser.Request
}

func newSession(srv *Server, conn *net.UnixConn) *session {
	id := srv.connSeq.Add(1)
	s := &session{srv: srv, conn: conn, id: id, peer: peerOf(conn), since: time.Now(),
		counters: make([]queueCounters, srv.be.NumQueues())}
	s.log = srv.log.WithField("conn", id)
	if s.peer.known {
		s.log = s.log.WithField("peer_pid", s.peer.pid)
	}
	s.vrings = make([]*vring, srv.be.NumQueues())
	for i := range s.vrings {
		s.vrings[i] = &vring{index: i}
	}
	s.publishViewLocked() // nobody else has s yet
	return s
}

// sessionView is a session's state as last published (Stats, Sessions).
type sessionView struct {
	rings              []ringView
	features, protocol uint64
	logSize            uint64 // bytes of the dirty log; 0 without one
	ready              bool
}

// ringView is one ring in a session's published view.
type ringView struct {
	enabled, running bool
	started          bool   // kicked and not stopped by GET_VRING_BASE since
	base             uint16 // the ring's base while no worker runs it
}

// publishViewLocked publishes the session's state for Stats and Sessions.
//
// The caller holds s.mu.
func (s *session) publishViewLocked() {
	v := &sessionView{rings: make([]ringView, len(s.vrings)), features: s.features, protocol: s.protocol, ready: s.ready}
	if s.dlog != nil {
		v.logSize = s.dlog.size
	}
	for i, vr := range s.vrings {
		v.rings[i] = ringView{
			enabled: vr.enabled || (vr.started && s.features&vhostuser.FeatureProtocolFeatures == 0),
			running: vr.w != nil,
			started: vr.started,
			base:    vr.base,
		}
	}
	s.view.Store(v)
}

// detach closes the connection without waiting for s.mu: the request
// being handled, and the queues' requests in flight, finish first, then
// serve sees the closed connection and tears the session down. It reports
// whether the connection was still up.
func (s *session) detach() bool {
	if s.closing.Swap(true) {
		return false
	}
	s.log.Info("vhost-user front-end detached on request")
	s.conn.Close()
	return true
}

// serve reads and handles requests until the connection ends or a request
// is malformed.
func (s *session) serve() {
	defer s.close()
	s.log.Info("vhost-user front-end connected")
	for {
		timeout := s.srv.opts.MessageTimeout
		if timeout <= 0 {
			timeout = vhostuser.DefaultMessageTimeout
		}
		hdr, payload, fds, err := vhostuser.ReadMessageTimeout(s.conn, timeout)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
				s.logDisconnected()
			default:
				s.log.WithError(err).Error("vhost: dropping connection: bad message")
			}
			return
		}
		m, err := vhostuser.DecodeMessage(hdr, payload, len(fds))
		if err != nil {
			vhostuser.CloseFDs(fds)
			s.log.WithError(err).Error("vhost: dropping connection: malformed message")
			return
		}
		if err := s.dispatch(m, fds); err != nil {
			s.log.WithError(err).Error("vhost: dropping connection")
			return
		}
	}
}

// logDisconnected logs that the front-end closed the connection. One that
// leaves during the handshake, before any queue started, most likely gave
// up on something this back-end offers, and says why only on its side
// (QEMU: "The maximum number of queues supported by the backend is 1"), so
// the log names the request it left after and what was negotiated by then.
func (s *session) logDisconnected() {
	s.mu.Lock() // no request is being handled: serve's loop is here
	ready, last, features, protocol := s.ready, s.lastRequest, s.features, s.protocol
	s.mu.Unlock()
	if ready || s.closing.Load() {
		s.log.Info("vhost-user front-end disconnected")
		return
	}
	log := s.log.WithFields(logrus.Fields{"last_request": last, "features": fmt.Sprintf("%#x", features),
		"protocol_features": fmt.Sprintf("%#x", protocol), "queues": len(s.vrings)})
	switch last {
	case 0: // none handled yet
		log.Info("vhost-user front-end disconnected before sending any request")
	case vhostuser.ReqGetQueueNum:
		// QEMU asks for its num-queues (by default one per vCPU) and gives
		// up at once when that is more than the answer.
		log.Infof("vhost-user front-end left during the handshake, after GET_QUEUE_NUM (the back-end offers %d queues; "+
			"a front-end wanting more gives up here)", len(s.vrings))
	default:
		log.Infof("vhost-user front-end left during the handshake, after %v, before starting any queue", last)
	}
}

// dispatch handles one decoded request and sends its reply. It owns fds.
// A returned error ends the connection.
func (s *session) dispatch(m vhostuser.Message, fds []int) (err error) {
	// Handling a request can touch guest memory and the inflight region
	// (starting a ring reads its used index, starting a queue recovers
	// its inflight records): a fault there, in a file the front-end
	// shrank, ends this connection instead of the process (fault.go).
	// The goroutine is the session's, which has no other use for the
	// setting; it is restored all the same.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.publishViewLocked()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v: %w", m.Hdr.Request, sharedFault(r, s.mem, s.inflight, s.dlog))
		}
	}()
	if s.closed {
		vhostuser.CloseFDs(fds)
		return net.ErrClosed
	}
	s.lastRequest = m.Hdr.Request
	log := s.log.WithField("request", m.Hdr.Request)
	if m.Hdr.Request == vhostuser.ReqGetInflightFD {
		// The one reply that carries an fd: it sends it itself.
		return s.getInflightFDLocked(m.Inflight)
	}
	reply, err := s.handleLocked(m, fds)
	if err != nil {
		if errors.Is(err, vhostuser.ErrMalformed) || errors.Is(err, errDrop) {
			return err
		}
		if errors.Is(err, ErrUnsupported) {
			log.WithError(err).Warn("vhost: unsupported request")
		} else {
			log.WithError(err).Error("vhost: request failed")
		}
	} else {
		log.Debug("vhost: request done")
	}
	// Published before the reply, not only when dispatch returns: a
	// front-end that has its reply may look at Stats or Sessions next.
	s.publishViewLocked()
	if reply != nil {
		return s.replyLocked(m.Hdr.Request, reply)
	}
	if m.Hdr.Flags&vhostuser.FlagNeedReply != 0 && s.protocol&vhostuser.ProtoReplyAck != 0 {
		var ack uint64
		if err != nil {
			ack = 1
		}
		return s.replyLocked(m.Hdr.Request, vhostuser.EncodeU64(ack))
	}
	return nil
}

// The caller holds s.mu.
func (s *session) replyLocked(req vhostuser.Request, payload []byte) error {
	if err := vhostuser.WriteMessage(s.conn, vhostuser.EncodeMessage(req, vhostuser.ReplyFlags, payload), nil); err != nil {
		return fmt.Errorf("vhost: reply to %v: %w", req, err)
	}
	return nil
}

// handleLocked performs one request. It takes ownership of fds and closes
// every one it does not keep. A non-nil reply is the request's own reply
// body; errors wrapping ErrMalformed end the connection, others are
// reported through REPLY_ACK.
//
// The caller holds s.mu.
func (s *session) handleLocked(m vhostuser.Message, fds []int) (reply []byte, err error) {
	req := m.Hdr.Request
	defer func() {
		if err != nil {
			err = fmt.Errorf("%v: %w", req, err)
		}
	}()
	if !m.Known {
		vhostuser.CloseFDs(fds)
		return nil, ErrUnsupported
	}
	switch req {
	case vhostuser.ReqGetFeatures:
		return vhostuser.EncodeU64(s.offeredFeatures()), nil
	case vhostuser.ReqSetFeatures:
		if m.U64&^s.offeredFeatures() != 0 {
			return nil, fmt.Errorf("%w: %#x", ErrBadFeatures, m.U64&^s.offeredFeatures())
		}
		if m.U64&vhostuser.FeatureLogAll != 0 && s.logRefused {
			return nil, fmt.Errorf("%w: VHOST_F_LOG_ALL: the dirty log (SET_LOG_BASE) was refused", ErrBadFeatures)
		}
		// Workers take the features (and so whether they log) when they
		// start: QEMU turns logging on and off with the rings running,
		// and they restart on the new features after their requests.
		running := s.stopAllLocked()
		if (s.features^m.U64)&vhostuser.FeatureLogAll != 0 {
			msg := "vhost: dirty logging off"
			if m.U64&vhostuser.FeatureLogAll != 0 {
				msg = "vhost: dirty logging on" // a migration starts
			}
			s.log.WithField("dirty_log_bytes", s.logSizeLocked()).Info(msg)
		}
		s.features = m.U64
		return nil, s.startLocked(running)
	case vhostuser.ReqGetProtocolFeatures:
		return vhostuser.EncodeU64(s.protocolFeatures()), nil
	case vhostuser.ReqSetProtocolFeatures:
		if offered := s.protocolFeatures(); m.U64&^offered != 0 {
			s.protocol = m.U64 & offered
			return nil, fmt.Errorf("%w: protocol %#x", ErrBadFeatures, m.U64&^offered)
		}
		s.protocol = m.U64
		return nil, nil
	case vhostuser.ReqSetOwner:
		return nil, nil
	case vhostuser.ReqResetOwner:
		// Deprecated; the spec recommends ignoring it or disabling rings.
		s.stopAllLocked()
		for _, vr := range s.vrings {
			vr.enabled = false
		}
		return nil, nil
	case vhostuser.ReqResetDevice:
		s.resetDeviceLocked()
		return nil, nil
	case vhostuser.ReqGetQueueNum:
		return vhostuser.EncodeU64(uint64(len(s.vrings))), nil
	case vhostuser.ReqGetMaxMemSlots:
		return vhostuser.EncodeU64(vhostuser.MaxMemSlots), nil
	case vhostuser.ReqSetMemTable:
		return nil, s.setMemTableLocked(m.Regions, fds)
	case vhostuser.ReqAddMemReg:
		return nil, s.addMemRegLocked(m.Regions[0], fds[0])
	case vhostuser.ReqRemMemReg:
		vhostuser.CloseFDs(fds)
		return nil, s.remMemRegLocked(m.Regions[0])
	case vhostuser.ReqSetVringNum, vhostuser.ReqSetVringBase, vhostuser.ReqSetVringEnable:
		return nil, s.setVringStateLocked(req, m.State)
	case vhostuser.ReqGetVringBase:
		vr, err := s.vringLocked(uint64(m.State.Index))
		if err != nil {
			// QEMU waits for this reply; a wrong index is a broken peer.
			return nil, fmt.Errorf("%w: %w", vhostuser.ErrMalformed, err)
		}
		s.stopLocked(vr)
		vr.started = false
		if vr.kick != nil {
			vr.kick.Close()
			vr.kick = nil
		}
		num := uint32(vr.base)
		if s.features&virtio.FRingPacked != 0 {
			num |= uint32(vr.usedBase) << 16 // vhost-user: used half of a packed ring's state
		}
		return vhostuser.VringState{Index: m.State.Index, Num: num}.Encode(), nil
	case vhostuser.ReqSetVringAddr:
		return nil, s.setVringAddrLocked(m.Addr)
	case vhostuser.ReqSetVringKick, vhostuser.ReqSetVringCall, vhostuser.ReqSetVringErr:
		return nil, s.setVringFDLocked(req, m.U64, fds)
	case vhostuser.ReqGetConfig:
		return s.getConfigLocked(m.Config), nil
	case vhostuser.ReqSetConfig:
		cw, ok := s.srv.be.(ConfigWriter)
		if !ok {
			return nil, fmt.Errorf("%w: config space is read-only", ErrBadConfig)
		}
		return nil, cw.SetConfig(m.Config.Offset, m.Config.Payload, m.Config.Flags)
	case vhostuser.ReqSetStatus:
		if m.U64 > 0xff {
			return nil, fmt.Errorf("%w: status %#x", ErrBadConfig, m.U64)
		}
		s.status = uint8(m.U64)
		if s.status == 0 {
			// The driver reset the device: a broken ring may run again.
			for _, vr := range s.vrings {
				vr.broken.Store(false)
			}
		}
		return nil, nil
	case vhostuser.ReqSetInflightFD:
		return nil, s.setInflightFDLocked(m.Inflight, fds[0])
	case vhostuser.ReqSetLogBase:
		return s.setLogBaseLocked(m.Log, fds)
	case vhostuser.ReqSetBackendReqFD:
		return nil, s.setBackendReqFD(fds[0])
	case vhostuser.ReqGetStatus:
		st := s.status
		for _, vr := range s.vrings {
			if vr.broken.Load() {
				st |= virtio.StatusDeviceNeedsReset
			}
		}
		return vhostuser.EncodeU64(uint64(st)), nil
	}
	vhostuser.CloseFDs(fds)
	return nil, ErrUnsupported
}

func (s *session) offeredFeatures() uint64 {
	// The ring layouts are the server's (virtq), not the device's.
	f := s.srv.be.Features() | vhostuser.FeatureProtocolFeatures | virtio.FRingPacked
	if s.srv.opts.Migration {
		f |= vhostuser.FeatureLogAll
	}
	return f
}

// setLogBaseLocked maps the dirty log of SET_LOG_BASE (log.go) in place of
// the one before, which it unmaps, and closes fds. The reply, which QEMU
// waits for once LOG_SHMFD is negotiated, is a u64: 0, or 1 when the log
// was refused (QEMU does not read it; see session.logRefused). A refused
// log leaves none: the old one is the front-end's no longer. A log refused
// while logging is on ends the connection instead (errDrop).
//
// The caller holds s.mu.
func (s *session) setLogBaseLocked(l vhostuser.Log, fds []int) ([]byte, error) {
	defer vhostuser.CloseFDs(fds) // the mapping, if any, keeps the log
	if s.protocol&vhostuser.ProtoLogSHMFD == 0 {
		// Without LOG_SHMFD the front-end waits for no reply, and there
		// is no log we could share.
		return nil, fmt.Errorf("%w: without VHOST_USER_PROTOCOL_F_LOG_SHMFD", ErrUnsupported)
	}
	var d *dirtyLog
	var err error
	if len(fds) == 0 {
		err = fmt.Errorf("%w: no fd", ErrBadLog)
	} else {
		d, err = newDirtyLog(l, fds[0], s.mem.end(), s.log, &s.logOutside)
	}
	// Workers logging into the old log stop (after their requests) before
	// it is unmapped, and restart on the new one.
	logging := s.features&vhostuser.FeatureLogAll != 0
	var running []*vring
	if logging {
		running = s.stopAllLocked()
	}
	old := s.dlog
	s.dlog, s.logRefused = d, err != nil
	if uerr := old.unmap(); uerr != nil {
		s.log.WithError(uerr).Warn("vhost: munmap of the old dirty log")
	}
	serr := s.startLocked(running)
	if err != nil && logging {
		// A new log while logging is on (QEMU resizing it as memory
		// grows mid-migration): QEMU goes on without looking at the
		// reply and would copy a guest whose writes go unlogged, so
		// the refusal is the connection's end, which it does see.
		return nil, fmt.Errorf("%w: %w", errDrop, errors.Join(err, serr))
	}
	if err != nil {
		return vhostuser.EncodeU64(1), errors.Join(err, serr)
	}
	s.log.WithFields(logrus.Fields{"bytes": l.MmapSize, "covers": fmt.Sprintf("%#x", l.MmapSize*8*vhostuser.LogPageSize)}).
		Info("vhost: dirty log set")
	return vhostuser.EncodeU64(0), serr
}

// The caller holds s.mu.
func (s *session) logSizeLocked() uint64 {
	if s.dlog == nil {
		return 0
	}
	return s.dlog.size
}

// loggingLocked is the dirty log the workers mark, nil when not logging.
//
// The caller holds s.mu.
func (s *session) loggingLocked() *dirtyLog {
	if s.features&vhostuser.FeatureLogAll == 0 {
		return nil
	}
	return s.dlog
}

// The caller holds s.mu.
func (s *session) vringLocked(index uint64) (*vring, error) {
	if index >= uint64(len(s.vrings)) {
		return nil, fmt.Errorf("%w: index %d of %d queues", ErrBadVring, index, len(s.vrings))
	}
	return s.vrings[index], nil
}

// The caller holds s.mu.
func (s *session) setVringStateLocked(req vhostuser.Request, st vhostuser.VringState) error {
	vr, err := s.vringLocked(uint64(st.Index))
	if err != nil {
		return err
	}
	switch req {
	case vhostuser.ReqSetVringNum:
		if err := virtq.CheckSize(st.Num); err != nil {
			return fmt.Errorf("%w: %w", ErrBadVring, err)
		}
		if vr.w != nil {
			return fmt.Errorf("%w: queue %d is running", ErrBadVring, st.Index)
		}
		vr.num = st.Num
	case vhostuser.ReqSetVringBase:
		// A packed ring's num holds both positions (avail low, used high);
		// a split ring's only the avail index.
		if st.Num > 0xffff && s.features&virtio.FRingPacked == 0 {
			return fmt.Errorf("%w: base %d", ErrBadVring, st.Num)
		}
		if vr.w != nil {
			return fmt.Errorf("%w: queue %d is running", ErrBadVring, st.Index)
		}
		vr.base, vr.usedBase = uint16(st.Num), uint16(st.Num>>16)
	case vhostuser.ReqSetVringEnable:
		if st.Num > 1 {
			return fmt.Errorf("%w: enable %d", ErrBadVring, st.Num)
		}
		vr.enabled = st.Num == 1
		if !vr.enabled {
			s.stopLocked(vr)
			return nil
		}
		return s.startLocked([]*vring{vr})
	}
	return nil
}

// The caller holds s.mu.
func (s *session) setVringAddrLocked(a vhostuser.VringAddr) error {
	vr, err := s.vringLocked(uint64(a.Index))
	if err != nil {
		return err
	}
	if a.Flags&^vhostuser.VringFLog != 0 {
		return fmt.Errorf("%w: vring flags %#x", ErrBadVring, a.Flags)
	}
	if a.Flags&vhostuser.VringFLog != 0 && a.Log%4 != 0 {
		// The spec's vhost_vring_addr: "Address must be 32 bit aligned".
		return fmt.Errorf("%w: log_guest_addr %#x not 4-aligned", ErrBadVring, a.Log)
	}
	if err := virtq.CheckAlignment(a.Desc, a.Avail, a.Used); err != nil {
		return fmt.Errorf("%w: %w", ErrBadVring, err)
	}
	if vr.num != 0 && s.mem != nil {
		if _, err := s.ringGuestAddrsLocked(a, vr.num); err != nil {
			return err
		}
	}
	running := vr.w != nil
	s.stopLocked(vr)
	vr.addr, vr.addrSet = a, true
	if running {
		return s.startLocked([]*vring{vr})
	}
	return nil
}

// ringAddrs are a ring's parts as guest-physical addresses.
type ringAddrs struct{ desc, avail, used uint64 }

// ringGuestAddrsLocked translates the user addresses of SET_VRING_ADDR to
// guest-physical ones, checking that each part of a num-entry ring lies
// inside one region.
//
// The caller holds s.mu.
func (s *session) ringGuestAddrsLocked(a vhostuser.VringAddr, num uint32) (ringAddrs, error) {
	var r ringAddrs
	var err error
	n := uint64(num)
	availLen, usedLen := 6+2*n, 6+8*n
	if s.features&virtio.FRingPacked != 0 {
		availLen, usedLen = 4, 4 // the event suppression areas (virtio 1.2 §2.8.10)
	}
	if r.desc, err = s.mem.userToGuest(a.Desc, 16*n); err != nil {
		return r, fmt.Errorf("descriptor table: %w", err)
	}
	if r.avail, err = s.mem.userToGuest(a.Avail, availLen); err != nil {
		return r, fmt.Errorf("avail ring: %w", err)
	}
	if r.used, err = s.mem.userToGuest(a.Used, usedLen); err != nil {
		return r, fmt.Errorf("used ring: %w", err)
	}
	return r, nil
}

// The caller holds s.mu.
func (s *session) setVringFDLocked(req vhostuser.Request, v uint64, fds []int) error {
	vr, err := s.vringLocked(v & vhostuser.VringIndexMask)
	if err != nil {
		vhostuser.CloseFDs(fds)
		return err
	}
	var f *os.File
	if len(fds) == 1 {
		if err := checkEventfd(fds[0]); err != nil {
			unix.Close(fds[0])
			return err
		}
		if err := unix.SetNonblock(fds[0], true); err != nil {
			unix.Close(fds[0])
			return fmt.Errorf("eventfd: %w", err)
		}
		// A nonblocking fd is registered with the runtime poller, so a
		// worker's Read can be interrupted with a deadline.
		f = os.NewFile(uintptr(fds[0]), fmt.Sprintf("%v-%d", req, vr.index))
	}
	switch req {
	case vhostuser.ReqSetVringKick:
		s.stopLocked(vr)
		if vr.kick != nil {
			vr.kick.Close()
		}
		vr.kick, vr.kickPoll, vr.started = f, f == nil, true
		return s.startLocked([]*vring{vr})
	case vhostuser.ReqSetVringCall:
		if old := vr.call.Swap(f); old != nil {
			old.Close()
		}
		if f != nil && vr.w != nil {
			// A completion may have been signalled on the old fd after
			// the front-end stopped watching it; a spurious one is harmless.
			signal(f)
		}
	case vhostuser.ReqSetVringErr:
		if old := vr.errFD.Swap(f); old != nil {
			old.Close()
		}
	}
	return nil
}

// checkEventfd refuses an fd that is not an eventfd as a ring's kick, call
// or error fd. Anything else reads and writes differently: a pipe at EOF,
// say, would wake the worker at once on every wait, forever.
func checkEventfd(fd int) error {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err == nil {
		if link != "anon_inode:[eventfd]" {
			return fmt.Errorf("%w: fd is %s, not an eventfd", ErrBadVring, link)
		}
		return nil
	}
	// No /proc: an eventfd is at least an anonymous inode, which has no
	// file type; a pipe, socket, device or file has one.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	if st.Mode&unix.S_IFMT != 0 {
		return fmt.Errorf("%w: fd of file type %#o, not an eventfd", ErrBadVring, st.Mode&unix.S_IFMT)
	}
	return nil
}

// The caller holds s.mu.
func (s *session) getConfigLocked(c vhostuser.ConfigSpace) []byte {
	cfg := s.srv.be.Config()
	end := uint64(c.Offset) + uint64(c.Size)
	if c.Size == 0 || end > vhostuser.MaxConfigSize {
		s.log.WithField("offset", c.Offset).WithField("size", c.Size).Warn("vhost: GET_CONFIG out of range")
		return []byte{} // an empty payload tells the front-end it failed
	}
	out := make([]byte, c.Size) // exactly the size asked; zero past the device's config
	if uint64(c.Offset) < uint64(len(cfg)) {
		copy(out, cfg[c.Offset:])
	}
	return vhostuser.ConfigSpace{Offset: c.Offset, Flags: c.Flags, Payload: out}.Encode()
}

// setMemTableLocked maps every region (each fd once, then closed: the
// mapping keeps the memory) and replaces the table, unmapping the old one.
//
// The caller holds s.mu.
func (s *session) setMemTableLocked(regions []vhostuser.MemRegion, fds []int) error {
	defer vhostuser.CloseFDs(fds)
	var mapped []*guestRegion
	fail := func(err error) error {
		for _, g := range mapped {
			g.unmap()
		}
		return err
	}
	for i, r := range regions {
		g, err := newGuestRegion(r, fds[i])
		if err != nil {
			return fail(fmt.Errorf("region %d: %w", i, err))
		}
		mapped = append(mapped, g)
	}
	t, err := newMemTable(mapped)
	if err != nil {
		return fail(err)
	}
	s.replaceMemLocked(t, true)
	return nil
}

// The caller holds s.mu.
func (s *session) addMemRegLocked(r vhostuser.MemRegion, fd int) error {
	defer unix.Close(fd)
	if s.mem.len() >= vhostuser.MaxMemSlots {
		return fmt.Errorf("%w: all %d slots in use", ErrBadRegion, vhostuser.MaxMemSlots)
	}
	g, err := newGuestRegion(r, fd)
	if err != nil {
		return err
	}
	var regions []*guestRegion
	if s.mem != nil {
		regions = append(regions, s.mem.regions...)
	}
	t, err := newMemTable(append(regions, g))
	if err != nil {
		g.unmap()
		return err
	}
	s.replaceMemLocked(t, false)
	return nil
}

// The caller holds s.mu.
func (s *session) remMemRegLocked(r vhostuser.MemRegion) error {
	i := s.mem.find(r)
	if i < 0 {
		return fmt.Errorf("%w: no region at guest %#x user %#x size %#x", ErrBadRegion, r.GuestAddr, r.UserAddr, r.Size)
	}
	gone := s.mem.regions[i]
	rest := append(append([]*guestRegion(nil), s.mem.regions[:i]...), s.mem.regions[i+1:]...)
	t, _ := newMemTable(rest) // a subset of a valid table is valid
	s.replaceMemLocked(t, false)
	return gone.unmap()
}

// replaceMemLocked installs t. Workers hold windows into the old mappings,
// so they are stopped (draining their in-flight requests) first and
// restarted on the new table; so are the rings that were waiting for
// memory (kicked and enabled before any came, or before the region that
// holds them). unmapOld unmaps every old region (SET_MEM_TABLE replaces
// all); otherwise the caller handles the one region that left.
//
// The caller holds s.mu.
func (s *session) replaceMemLocked(t *memTable, unmapOld bool) {
	running := s.stopAllLocked()
	old := s.mem
	s.mem = t
	if unmapOld && old != nil {
		for _, g := range old.regions {
			if err := g.unmap(); err != nil {
				s.log.WithError(err).Warn("vhost: munmap")
			}
		}
	}
	if err := s.startLocked(running); err != nil {
		s.log.WithError(err).Error("vhost: restarting queues on the new memory table")
	}
	// A waiting ring still outside memory is no error yet: ADD_MEM_REG
	// brings the regions one at a time.
	if err := s.startLocked(s.vrings); err != nil {
		s.log.WithError(err).Debug("vhost: queue waits for more guest memory")
	}
}

// resetDeviceLocked returns every vring to its initial state (RESET_DEVICE).
// The memory table stays: it belongs to the connection, not the device.
//
// The caller holds s.mu.
func (s *session) resetDeviceLocked() {
	s.stopAllLocked()
	for _, vr := range s.vrings {
		vr.closeFiles()
		vr.vringState = vringState{}
		vr.started, vr.kickPoll = false, false
		vr.broken.Store(false)
	}
	s.features, s.status = 0, 0
	if s.inflight != nil {
		// A reset device has nothing in flight; QEMU asks for a new
		// region (GET_INFLIGHT_FD) when it starts it again.
		s.inflight.unmap()
		s.inflight = nil
	}
}

func (vr *vring) closeFiles() {
	if vr.kick != nil {
		vr.kick.Close()
		vr.kick = nil
	}
	if f := vr.call.Swap(nil); f != nil {
		f.Close()
	}
	if f := vr.errFD.Swap(nil); f != nil {
		f.Close()
	}
}

// runnableLocked says whether vr should have a worker: started by a kick,
// enabled (rings start enabled when VHOST_USER_F_PROTOCOL_FEATURES was not
// negotiated), fully described, memory mapped and not broken.
//
// The caller holds s.mu.
func (s *session) runnableLocked(vr *vring) bool {
	enabled := vr.enabled || s.features&vhostuser.FeatureProtocolFeatures == 0
	return vr.started && enabled && vr.num != 0 && vr.addrSet && s.mem != nil &&
		!vr.broken.Load() && !s.closed
}

// stopAllLocked stops every running worker and returns their vrings.
//
// The caller holds s.mu.
func (s *session) stopAllLocked() []*vring {
	var running []*vring
	for _, vr := range s.vrings {
		if vr.w != nil {
			running = append(running, vr)
			s.stopLocked(vr)
		}
	}
	return running
}

// stopLocked stops vr's worker, if any, after it finished the chains it had
// taken, and saves its last avail index as the ring's base.
//
// The caller holds s.mu.
func (s *session) stopLocked(vr *vring) {
	if vr.w == nil {
		return
	}
	vr.base = vr.w.stop()
	vr.usedBase = vr.w.q.UsedIdx()
	vr.w = nil
	s.log.WithField("queue", vr.index).WithField("last_avail", vr.base).Info("vhost: queue stopped")
}

// startLocked starts a worker for every runnable vring of vrs that has none.
//
// The caller holds s.mu.
func (s *session) startLocked(vrs []*vring) error {
	var errs []error
	for _, vr := range vrs {
		if vr.w != nil || !s.runnableLocked(vr) {
			continue
		}
		addrs, err := s.ringGuestAddrsLocked(vr.addr, vr.num)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: queue %d: %w", ErrBadVring, vr.index, err))
			continue
		}
		w, err := startWorker(s, vr, addrs)
		if err != nil {
			errs = append(errs, fmt.Errorf("queue %d: %w", vr.index, err))
			continue
		}
		vr.w = w
		if !s.ready {
			s.ready = true
			s.log.WithFields(logrus.Fields{"features": fmt.Sprintf("%#x", s.features), "protocol_features": fmt.Sprintf("%#x", s.protocol),
				"memory_regions": s.mem.len()}).Info("vhost-user handshake done")
		}
		s.log.WithFields(logrus.Fields{"queue": vr.index, "size": vr.num, "last_avail": vr.base}).Info("vhost: queue started")
	}
	return errors.Join(errs...)
}

// close stops the workers, releases every fd and mapping and closes the
// connection. Idempotent.
func (s *session) close() {
	s.closing.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.stopAllLocked()
	s.closed = true
	for _, vr := range s.vrings {
		vr.closeFiles()
	}
	if s.mem != nil {
		for _, g := range s.mem.regions {
			g.unmap()
		}
		s.mem = nil
	}
	if s.inflight != nil {
		s.inflight.unmap() // QEMU keeps the memory for the next back-end
		s.inflight = nil
	}
	s.dlog.unmap()
	s.dlog = nil
	s.backendMu.Lock()
	if s.backend != nil {
		s.backend.Close()
		s.backend = nil
	}
	s.backendMu.Unlock()
	s.conn.Close()
}

// setBackendReqFD takes the front-end's end of the back-end request channel
// (a unix socket), replacing and closing any earlier one. fd is owned from
// here on.
func (s *session) setBackendReqFD(fd int) error {
	f := os.NewFile(uintptr(fd), "backend-req")
	c, err := net.FileConn(f)
	f.Close() // FileConn holds a duplicate
	if err != nil {
		return fmt.Errorf("%w: SET_BACKEND_REQ_FD: %v", ErrBadConfig, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return fmt.Errorf("%w: SET_BACKEND_REQ_FD: not a unix socket", ErrBadConfig)
	}
	s.backendMu.Lock()
	defer s.backendMu.Unlock()
	if s.backend != nil {
		s.backend.Close()
	}
	s.backend = uc
	return nil
}

// backendReplyTimeout bounds the wait for the front-end's answer to a
// back-end request: QEMU answers once it has read the config again.
const backendReplyTimeout = 5 * time.Second

// notifyConfigChange sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the
// back-end channel and, with REPLY_ACK negotiated, waits for the answer.
// It reports false when the front-end gave no channel (or does not read
// the config space through GET_CONFIG), so it cannot be told.
func (s *session) notifyConfigChange() (bool, error) {
	// The published view, not mu: a request stuck on a guest's I/O holds
	// mu, and the operator growing the disk must not wait for it.
	v := s.view.Load()
	if v == nil || v.protocol&vhostuser.ProtoConfig == 0 {
		return false, nil
	}
	s.backendMu.Lock()
	defer s.backendMu.Unlock()
	if s.backend == nil {
		return false, nil
	}
	flags := vhostuser.FlagVersion
	ack := v.protocol&vhostuser.ProtoReplyAck != 0
	if ack {
		flags |= vhostuser.FlagNeedReply
	}
	if err := vhostuser.WriteMessage(s.backend, vhostuser.EncodeMessage(vhostuser.BackendReqConfigChange, flags, nil), nil); err != nil {
		return true, fmt.Errorf("config change: %w", err)
	}
	if !ack {
		return true, nil
	}
	hdr, payload, fds, err := vhostuser.ReadMessageTimeout(s.backend, backendReplyTimeout)
	vhostuser.CloseFDs(fds)
	if err != nil {
		return true, fmt.Errorf("config change: reply: %w", err)
	}
	if hdr.Request != vhostuser.BackendReqConfigChange || hdr.Flags&vhostuser.FlagReply == 0 {
		return true, fmt.Errorf("config change: reply %v with flags %#x", hdr.Request, hdr.Flags)
	}
	if v, err := vhostuser.DecodeU64(payload); err != nil || v != 0 {
		return true, fmt.Errorf("config change: the front-end answered %d (%v)", v, err)
	}
	return true, nil
}

// signal writes an eventfd increment. It never waits: EAGAIN (counter
// saturated) already means "signalled", so the write bypasses the poller.
func signal(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	one := [8]byte{1}
	rc.Write(func(fd uintptr) bool {
		unix.Write(int(fd), one[:])
		return true
	})
}
