package frontend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/virtio"
	"golang.org/x/sys/unix"
)

// ErrQueueFull is returned by Submit when no descriptor or slot is free.
var ErrQueueFull = errors.New("frontend: queue full")

// statusUnset marks a status byte the device has not written.
const statusUnset = 0xff

// Request is one virtio-blk request.
type Request struct {
	Type   uint32
	Sector uint64 // in 512-byte sectors
	// Data is written to the device (OUT) or filled from it (IN, GET_ID:
	// its length is how much is read).
	Data []byte
	// NumSectors and Unmap describe DISCARD / WRITE_ZEROES.
	NumSectors uint32
	Unmap      bool

	// Results, valid once Done.
	Done    bool
	Status  byte   // device's status byte (0xff if it wrote none)
	Written uint32 // used element length

	// DataAddr and StatusAddr are the guest addresses of the request's
	// data buffer (len(Data) bytes, page aligned) and status byte, set by
	// Submit: where a device's writes land (dirty-log tests).
	DataAddr, StatusAddr uint64

	slot  int
	descs []uint16
}

// slot layout: one request's header, status, discard segment, indirect
// table and data buffer in guest memory.
const (
	slotHdr    = 0
	slotStatus = 16
	slotDWZ    = 32
	slotTable  = 64
)

type slot struct {
	gpa  uint64
	buf  []byte
	data uint64 // offset of the data buffer in buf
}

// Queue submits virtio-blk requests on one Ring. Not safe for concurrent
// use: one goroutine per queue.
type Queue struct {
	Index    int
	Ring     *Ring
	indirect bool
	segSize  int
	maxIO    int
	slots    []slot
	free     []int    // free slots
	freeDesc []uint16 // free descriptors
	inflight map[uint16]*Request
}

func newQueue(mem *Memory, index int, o *Options, eventIdx, indirect, packed bool) (*Queue, error) {
	alloc := allocator(mem.Alloc)
	if o.RegionPerQueue {
		alloc = func(n, align uint64) (uint64, []byte, error) { return mem.AllocIn(index, n, align) }
	}
	r, err := newRing(alloc, o.QueueSize, eventIdx, packed)
	if err != nil {
		return nil, err
	}
	q := &Queue{Index: index, Ring: r, indirect: indirect, segSize: o.SegSize, maxIO: o.MaxIO,
		inflight: map[uint16]*Request{}}
	maxSegs := o.MaxIO/max(o.SegSize, 1) + 1
	if o.SegSize == 0 {
		maxSegs = 1
	}
	tableLen := uint64(16 * (maxSegs + 3))
	dataOff := (slotTable + tableLen + 4095) &^ 4095
	for i := 0; i < int(o.QueueSize); i++ {
		gpa, buf, err := alloc(dataOff+uint64(o.MaxIO), 4096)
		if err != nil {
			r.Close()
			return nil, err
		}
		q.slots = append(q.slots, slot{gpa: gpa, buf: buf, data: dataOff})
		q.free = append(q.free, i)
		q.freeDesc = append(q.freeDesc, uint16(i))
	}
	return q, nil
}

type elem struct {
	addr  uint64
	n     uint32
	write bool
}

// Submit places r on the ring (without notifying: call Kick).
func (q *Queue) Submit(r *Request) error {
	if len(r.Data) > q.maxIO {
		return fmt.Errorf("frontend: %d bytes over MaxIO %d", len(r.Data), q.maxIO)
	}
	if len(q.free) == 0 {
		return ErrQueueFull
	}
	si := q.free[len(q.free)-1]
	s := &q.slots[si]
	binary.LittleEndian.PutUint32(s.buf[slotHdr:], r.Type)
	binary.LittleEndian.PutUint32(s.buf[slotHdr+4:], 0)
	binary.LittleEndian.PutUint64(s.buf[slotHdr+8:], r.Sector)
	s.buf[slotStatus] = statusUnset
	els := []elem{{s.gpa + slotHdr, virtio.BlkReqHeaderSize, false}}
	switch r.Type {
	case virtio.BlkTDiscard, virtio.BlkTWriteZeroes:
		binary.LittleEndian.PutUint64(s.buf[slotDWZ:], r.Sector)
		binary.LittleEndian.PutUint32(s.buf[slotDWZ+8:], r.NumSectors)
		var flags uint32
		if r.Unmap {
			flags = 1
		}
		binary.LittleEndian.PutUint32(s.buf[slotDWZ+12:], flags)
		els = append(els, elem{s.gpa + slotDWZ, virtio.BlkDWZSegSize, false})
	case virtio.BlkTFlush:
	default:
		write := r.Type != virtio.BlkTOut
		if !write {
			copy(s.buf[s.data:], r.Data)
		}
		seg := q.segSize
		if seg <= 0 {
			seg = len(r.Data)
		}
		for off := 0; off < len(r.Data); off += seg {
			n := min(seg, len(r.Data)-off)
			els = append(els, elem{s.gpa + s.data + uint64(off), uint32(n), write})
		}
	}
	els = append(els, elem{s.gpa + slotStatus, 1, true})

	need := len(els)
	if q.indirect && need > 1 {
		need = 1
	}
	if len(q.freeDesc) < need {
		return ErrQueueFull
	}
	q.free = q.free[:len(q.free)-1]
	r.slot, r.Done, r.Status, r.Written = si, false, statusUnset, 0
	r.DataAddr, r.StatusAddr = s.gpa+s.data, s.gpa+slotStatus
	r.descs = append(r.descs[:0], q.freeDesc[len(q.freeDesc)-need:]...)
	q.freeDesc = q.freeDesc[:len(q.freeDesc)-need]
	if need == 1 && len(els) > 1 {
		t := s.buf[slotTable:]
		for i, e := range els {
			q.Ring.putTableDesc(t[16*i:], e, i+1 < len(els), uint16(i+1))
		}
		q.Ring.WriteDesc(r.descs[0], s.gpa+slotTable, uint32(16*len(els)), DescFIndirect, 0)
	} else {
		for i, e := range els {
			var next uint16
			if i+1 < len(els) {
				next = r.descs[i+1]
			}
			var fl uint16
			if i+1 < len(els) {
				fl |= DescFNext
			}
			if e.write {
				fl |= DescFWrite
			}
			q.Ring.WriteDesc(r.descs[i], e.addr, e.n, fl, next)
		}
	}
	q.inflight[r.descs[0]] = r
	q.Ring.PushAvail(r.descs[0])
	return nil
}

func putDesc(d []byte, e elem, more bool, next uint16) {
	var fl uint16
	if more {
		fl |= DescFNext
	}
	if e.write {
		fl |= DescFWrite
	}
	binary.LittleEndian.PutUint64(d[0:], e.addr)
	binary.LittleEndian.PutUint32(d[8:], e.n)
	binary.LittleEndian.PutUint16(d[12:], fl)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// SubmitAll places every request on the ring and makes them visible to the
// device at once, with one avail.idx store (without notifying: call Kick).
// On an error the requests placed so far are published.
func (q *Queue) SubmitAll(rs []*Request) error {
	q.Ring.HoldAvail()
	defer q.Ring.ReleaseAvail()
	for _, r := range rs {
		if err := q.Submit(r); err != nil {
			return err
		}
	}
	return nil
}

// Kick notifies the device of submitted requests (subject to suppression).
func (q *Queue) Kick() { q.Ring.Notify() }

// Reap collects completed requests without waiting.
func (q *Queue) Reap() ([]*Request, error) {
	var done []*Request
	for {
		id, n, ok := q.Ring.PopUsed()
		if !ok {
			return done, nil
		}
		r := q.inflight[uint16(id)]
		if id > 0xffff || r == nil {
			return done, fmt.Errorf("frontend: queue %d: device completed unknown head %d", q.Index, id)
		}
		delete(q.inflight, uint16(id))
		s := &q.slots[r.slot]
		r.Status, r.Written, r.Done = s.buf[slotStatus], n, true
		if r.Type == virtio.BlkTIn || r.Type == virtio.BlkTGetID {
			copy(r.Data, s.buf[s.data:])
		}
		q.free = append(q.free, r.slot)
		q.freeDesc = append(q.freeDesc, r.descs...)
		done = append(done, r)
	}
}

// Inflight is the number of submitted, unreaped requests.
func (q *Queue) Inflight() int { return len(q.inflight) }

// Wait reaps, sleeping on the call eventfd (re-checking the used ring
// every few milliseconds in case the device suppressed the interrupt) until
// at least one request completes or timeout passes.
func (q *Queue) Wait(timeout time.Duration) ([]*Request, error) {
	deadline := time.Now().Add(timeout)
	for {
		done, err := q.Reap()
		if err != nil || len(done) > 0 {
			return done, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("frontend: queue %d: no completion within %v", q.Index, timeout)
		}
		if _, err := q.Ring.WaitCall(min(left, 5*time.Millisecond)); err != nil {
			return nil, err
		}
	}
}

// Do submits r, kicks and waits for it (other requests reaped meanwhile
// are completed too).
func (q *Queue) Do(r *Request, timeout time.Duration) error {
	if err := q.Submit(r); err != nil {
		return err
	}
	q.Kick()
	deadline := time.Now().Add(timeout)
	for !r.Done {
		if _, err := q.Wait(time.Until(deadline)); err != nil {
			return err
		}
	}
	if r.Status != virtio.BlkSOK {
		return fmt.Errorf("frontend: request type %d sector %d: status %d", r.Type, r.Sector, r.Status)
	}
	return nil
}

// Options configure Connect.
type Options struct {
	NumQueues int    // default 1; capped by GET_QUEUE_NUM
	QueueSize uint16 // default 64
	MemSize   uint64 // guest memory bytes; default enough for the queues
	Regions   int    // memory regions, default 1
	MaxIO     int    // largest data transfer per request; default 128 KiB
	SegSize   int    // split data into descriptors of this many bytes; 0 = one
	Indirect  bool   // use indirect descriptor tables if offered
	EventIdx  bool   // negotiate VIRTIO_RING_F_EVENT_IDX if offered
	Packed    bool   // drive packed rings (VIRTIO_F_RING_PACKED) if offered
	// MemSlots sends the regions with ADD_MEM_REG instead of SET_MEM_TABLE
	// when CONFIGURE_MEM_SLOTS is offered.
	MemSlots bool
	// NoEnable leaves the rings disabled (no SET_VRING_ENABLE).
	NoEnable bool
	// Inflight negotiates PROTOCOL_F_INFLIGHT_SHMFD when offered and sets
	// up an inflight region as QEMU does (see Device.Resume).
	Inflight bool
	// RegionPerQueue lays out queue i's ring and buffers in memory region
	// i alone (Regions must be at least NumQueues, and each region big
	// enough for a queue), so a test can take one queue's memory away and
	// leave the others'.
	RegionPerQueue bool
	// MemoryLast sends the memory table after the rings are set up,
	// kicked and enabled instead of before: the back-end has to start
	// them when the memory comes.
	MemoryLast bool
	// DirtyLog negotiates PROTOCOL_F_LOG_SHMFD when offered, so that
	// StartLogging can share a dirty log as QEMU does for a migration.
	DirtyLog bool
	// BackendReq negotiates PROTOCOL_F_BACKEND_REQ when offered and gives
	// the back-end a channel for its own requests (SET_BACKEND_REQ_FD), as
	// QEMU does; see Device.WaitConfigChange.
	BackendReq bool
}

// Device is a connected vhost-user-blk back-end with its rings running.
type Device struct {
	Conn     *Conn
	Mem      *Memory
	Queues   []*Queue
	Features uint64 // negotiated virtio features
	Protocol uint64 // negotiated protocol features
	Config   []byte // virtio_blk_config as read at connect (60 bytes)
	// Inflight and InflightFD are the inflight region the first back-end
	// gave (GET_INFLIGHT_FD), kept for the next; InflightFD is owned by
	// the Device and -1 without one.
	Inflight   vhostuser.Inflight
	InflightFD int
	// Log is the dirty log StartLogging shared, owned by the Device; nil
	// without one. logging says the rings were last set up to log.
	Log     *DirtyLog
	logging bool
	// Backend is this end of the back-end request channel (Options.
	// BackendReq), owned by the Device; nil without one.
	Backend *net.UnixConn
}

// wantedProtocol is every protocol feature this front-end can use.
const wantedProtocol = vhostuser.ProtoMQ | vhostuser.ProtoReplyAck | vhostuser.ProtoConfig | vhostuser.ProtoConfigureMemSlots

// Connect dials path and performs the whole QEMU-like start sequence.
func Connect(path string, o Options) (*Device, error) {
	c, err := Dial(path)
	if err != nil {
		return nil, err
	}
	d, err := Start(c, o)
	if err != nil {
		c.Close()
		return nil, err
	}
	return d, nil
}

// Start runs the handshake and ring setup on an open connection. c stays
// the caller's whatever happens; on an error, everything Start made (the
// inflight fd, guest memory, eventfds) is closed before it returns.
func Start(c *Conn, o Options) (*Device, error) {
	d := &Device{Conn: c, InflightFD: -1}
	if err := d.start(o); err != nil {
		// The Device owns every fd start made: one release closes them all,
		// whichever step failed.
		d.release()
		return nil, err
	}
	return d, nil
}

// start is Start's sequence; what it makes, it hands to d at once, so an
// error needs no cleanup of its own here.
func (d *Device) start(o Options) error {
	c := d.Conn
	if o.NumQueues == 0 {
		o.NumQueues = 1
	}
	if o.QueueSize == 0 {
		o.QueueSize = 64
	}
	if o.Regions == 0 {
		o.Regions = 1
	}
	if o.MaxIO == 0 {
		o.MaxIO = 128 << 10
	}
	offered, err := c.GetU64(vhostuser.ReqGetFeatures)
	if err != nil {
		return err
	}
	if offered&vhostuser.FeatureProtocolFeatures != 0 {
		p, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
		if err != nil {
			return err
		}
		d.Protocol = p & wantedProtocol
		if o.Inflight {
			d.Protocol |= p & vhostuser.ProtoInflightSHMFD
		}
		if o.DirtyLog {
			d.Protocol |= p & vhostuser.ProtoLogSHMFD
		}
		if o.BackendReq {
			d.Protocol |= p & vhostuser.ProtoBackendReq
		}
		if err := c.SetU64(vhostuser.ReqSetProtocolFeatures, d.Protocol); err != nil {
			return err
		}
		c.SetProtocolFeatures(d.Protocol)
	}
	if d.Protocol&vhostuser.ProtoMQ != 0 {
		n, err := c.GetU64(vhostuser.ReqGetQueueNum)
		if err != nil {
			return err
		}
		if uint64(o.NumQueues) > n {
			return fmt.Errorf("frontend: %d queues asked, back-end has %d", o.NumQueues, n)
		}
	} else if o.NumQueues > 1 {
		return fmt.Errorf("frontend: back-end lacks PROTOCOL_F_MQ for %d queues", o.NumQueues)
	}
	if _, err := c.Call(vhostuser.ReqSetOwner, nil, nil); err != nil {
		return err
	}
	if d.Protocol&vhostuser.ProtoBackendReq != 0 {
		if err := d.giveBackendChannel(); err != nil {
			return err
		}
	}
	if d.Protocol&vhostuser.ProtoConfig != 0 {
		if d.Config, err = c.GetConfig(0, virtio.BlkConfigSizeWriteZeroes); err != nil {
			return err
		}
	}
	want := virtio.FVersion1 | vhostuser.FeatureProtocolFeatures | virtio.BlkFSegMax |
		virtio.BlkFRO | virtio.BlkFBlkSize | virtio.BlkFFlush | virtio.BlkFTopology | virtio.BlkFMQ | virtio.BlkFDiscard | virtio.BlkFWriteZeroes
	// SIZE_MAX is a promise to keep every data descriptor within
	// size_max: made only when this front-end splits its data at least
	// that finely.
	if o.SegSize > 0 && len(d.Config) >= virtio.BlkCfgSizeMax+4 &&
		uint32(o.SegSize) <= binary.LittleEndian.Uint32(d.Config[virtio.BlkCfgSizeMax:]) {
		want |= virtio.BlkFSizeMax
	}
	if o.Indirect {
		want |= virtio.FRingIndirectDesc
	}
	if o.EventIdx {
		want |= virtio.FRingEventIdx
	}
	if o.Packed {
		want |= virtio.FRingPacked
	}
	d.Features = offered & want
	if err := c.SetU64(vhostuser.ReqSetFeatures, d.Features); err != nil {
		return err
	}
	if err := d.setupInflight(uint16(o.NumQueues), o.QueueSize); err != nil {
		return err
	}

	perQueue := uint64(o.QueueSize) * (uint64(o.MaxIO) + 8192 + uint64(16*(o.MaxIO/max(o.SegSize, 1)+4)))
	size := o.MemSize
	if size == 0 {
		size = uint64(o.NumQueues)*perQueue + 1<<20
	}
	page := uint64(4096) * uint64(o.Regions)
	size = (size + page - 1) / page * page
	if d.Mem, err = NewMemory(size, o.Regions); err != nil {
		return err
	}
	if !o.MemoryLast {
		if err := d.sendMemory(o.MemSlots); err != nil {
			return err
		}
	}
	for i := 0; i < o.NumQueues; i++ {
		q, err := newQueue(d.Mem, i, &o, d.Features&virtio.FRingEventIdx != 0, d.Features&virtio.FRingIndirectDesc != 0,
			d.Features&virtio.FRingPacked != 0)
		if err != nil {
			return err
		}
		d.Queues = append(d.Queues, q)
		if err := d.startRing(q, q.Ring.InitialBase(), !o.NoEnable); err != nil {
			return err
		}
	}
	if o.MemoryLast {
		return d.sendMemory(o.MemSlots)
	}
	return nil
}

func (d *Device) sendMemory(slots bool) error {
	if slots && d.Protocol&vhostuser.ProtoConfigureMemSlots != 0 {
		max, err := d.Conn.GetU64(vhostuser.ReqGetMaxMemSlots)
		if err != nil {
			return err
		}
		if max < uint64(len(d.Mem.Regions)) {
			return fmt.Errorf("frontend: back-end has %d memory slots", max)
		}
		for i := range d.Mem.Regions {
			if _, err := d.Conn.Call(vhostuser.ReqAddMemReg, vhostuser.EncodeSingleRegion(d.Mem.VhostRegion(i)), []int{d.Mem.FD()}); err != nil {
				return err
			}
		}
		return nil
	}
	fds := make([]int, len(d.Mem.Regions))
	for i := range fds {
		fds[i] = d.Mem.FD()
	}
	_, err := d.Conn.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(d.Mem.VhostRegions()), fds)
	return err
}

// startRing sends NUM, BASE, ADDR, CALL, KICK (and ENABLE) for q.
func (d *Device) startRing(q *Queue, base uint32, enable bool) error {
	if err := d.SendRing(q, base); err != nil {
		return err
	}
	if enable && d.Features&vhostuser.FeatureProtocolFeatures != 0 {
		return d.Conn.SetVringState(vhostuser.ReqSetVringEnable, uint32(q.Index), 1)
	}
	return nil
}

// SendRing sends NUM, BASE, ADDR, CALL and KICK for q, with base as the
// next avail index the back-end is to take: all of starting a ring but
// SET_VRING_ENABLE, which is the caller's to send or withhold.
func (d *Device) SendRing(q *Queue, base uint32) error {
	c, r, idx := d.Conn, q.Ring, uint32(q.Index)
	if err := c.SetVringState(vhostuser.ReqSetVringNum, idx, uint32(r.Size)); err != nil {
		return err
	}
	if err := c.SetVringState(vhostuser.ReqSetVringBase, idx, base); err != nil {
		return err
	}
	if err := d.sendVringAddr(q, d.logging); err != nil {
		return err
	}
	if err := c.SetVringFD(vhostuser.ReqSetVringCall, idx, r.Call); err != nil {
		return err
	}
	return c.SetVringFD(vhostuser.ReqSetVringKick, idx, r.Kick)
}

// sendVringAddr sends SET_VRING_ADDR for q, with VHOST_VRING_F_LOG and the
// used ring's guest address as log_guest_addr when log is set, as QEMU
// does while migrating.
func (d *Device) sendVringAddr(q *Queue, log bool) error {
	r := q.Ring
	a := vhostuser.VringAddr{Index: uint32(q.Index)}
	var err error
	if a.Desc, err = d.Mem.UserAddr(r.DescAddr); err != nil {
		return err
	}
	if a.Avail, err = d.Mem.UserAddr(r.AvailAddr); err != nil {
		return err
	}
	if a.Used, err = d.Mem.UserAddr(r.UsedAddr); err != nil {
		return err
	}
	if log {
		a.Flags, a.Log = vhostuser.VringFLog, r.UsedAddr
	}
	_, err = d.Conn.Call(vhostuser.ReqSetVringAddr, a.Encode(), nil)
	return err
}

// Capacity is the disk size in 512-byte sectors (from the config space).
func (d *Device) Capacity() uint64 {
	if len(d.Config) < 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(d.Config)
}

// Stop stops every ring (GET_VRING_BASE) and returns their avail bases.
func (d *Device) Stop() ([]uint32, error) {
	var bases []uint32
	for _, q := range d.Queues {
		b, err := d.Conn.GetVringBase(uint32(q.Index))
		if err != nil {
			return bases, err
		}
		bases = append(bases, b)
	}
	return bases, nil
}

// Close stops the rings, disconnects and frees memory and eventfds.
func (d *Device) Close() error {
	_, err := d.Stop()
	d.Conn.Close()
	d.release()
	return err
}

func (d *Device) release() {
	for _, q := range d.Queues {
		q.Ring.Close()
	}
	d.Queues = nil
	if d.Mem != nil {
		d.Mem.Close()
		d.Mem = nil
	}
	if d.InflightFD >= 0 {
		unix.Close(d.InflightFD)
		d.InflightFD = -1
	}
	if d.Backend != nil {
		d.Backend.Close()
		d.Backend = nil
	}
	if d.Log != nil {
		d.Log.Close()
		d.Log = nil
	}
}
