package conformance

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"time"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
)

// checks run in this order; each records one or more named results.
var checks = []func(*suite){
	checkHandshake,
	checkConfig,
	checkRequests,
	checkZeroing,
	checkLayouts,
	checkNotifications,
	checkMultiqueue,
	checkMemory,
	checkStopRing,
	checkReadOnly,
	checkReconnect,
}

// virtio_blk_config offsets used here (virtio 1.2 §5.2.4).
const (
	cfgCapacity      = 0
	cfgSegMax        = 12
	cfgBlkSize       = 20
	cfgNumQueues     = 34
	cfgMaxDiscard    = 36
	cfgMaxDiscardSeg = 40
	cfgMaxWZ         = 48
	cfgMaxWZSeg      = 52
	cfgSize          = 60
)

func pattern(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// probe reads what the back-end offers, with a connection of its own.
func (s *suite) probe() error {
	c, err := frontend.Dial(s.socket)
	if err != nil {
		return err
	}
	c.Timeout = s.timeout()
	s.offered, err = c.GetU64(vhostuser.ReqGetFeatures)
	if err == nil && s.has(vhostuser.FeatureProtocolFeatures) {
		s.protocol, err = c.GetU64(vhostuser.ReqGetProtocolFeatures)
	}
	c.Close()
	if err != nil {
		return err
	}
	d, err := s.connect(frontend.Options{})
	if err != nil {
		return err
	}
	defer d.Close()
	s.config, s.queues = d.Config, 1
	if len(s.config) < cfgSize {
		return fmt.Errorf("GET_CONFIG gave %d bytes (is VHOST_USER_PROTOCOL_F_CONFIG offered?)", len(s.config))
	}
	le := binary.LittleEndian
	s.capacity = le.Uint64(s.config[cfgCapacity:])
	s.blkSize = frontend.SectorSize
	if s.has(frontend.BlkFBlkSize) {
		if bs := le.Uint32(s.config[cfgBlkSize:]); bs >= 512 && bs <= 1<<16 && bs&(bs-1) == 0 {
			s.blkSize = bs
		}
	}
	if s.protoHas(vhostuser.ProtoMQ) {
		n, err := d.Conn.GetU64(vhostuser.ReqGetQueueNum)
		if err != nil {
			return err
		}
		s.queues = int(min(n, 64))
	}
	s.rep.Features, s.rep.Protocol, s.rep.Capacity, s.rep.BlockSize = s.offered, s.protocol, s.capacity, s.blkSize

	const scratchSectors = scratchBytes / frontend.SectorSize
	switch {
	case !s.opts.Destructive:
		s.scratchWhy = "writes data: needs --destructive"
	case s.has(frontend.BlkFRO):
		s.scratchWhy = "read-only device"
	case s.capacity < 4*scratchSectors:
		s.scratchWhy = fmt.Sprintf("disk of %d sectors is too small for a scratch range", s.capacity)
	default:
		s.scratch = (s.capacity - scratchSectors) / s.sectorsPerBlock() * s.sectorsPerBlock()
		s.scratchOK = true
	}
	return nil
}

func (s *suite) backupScratch() {
	if !s.scratchOK {
		return
	}
	v := s.withDev(frontend.Options{}, func(d *dev) verdict {
		var b []byte
		for off := 0; off < scratchBytes; off += maxData {
			part, err := d.read(s.scratch+uint64(off/frontend.SectorSize), min(maxData, scratchBytes-off))
			if err != nil {
				return errVerdict("reading the scratch range", err)
			}
			b = append(b, part...)
		}
		s.backup = b
		return passf("%d bytes at sector %d saved", len(b), s.scratch)
	})
	s.record("scratch/backup", v)
	if v.outcome != Pass {
		s.scratchOK, s.scratchWhy = false, "the scratch range could not be saved"
	}
}

func (s *suite) restoreScratch() {
	if s.backup == nil {
		return
	}
	s.record("scratch/restore", s.withDev(frontend.Options{}, func(d *dev) verdict {
		for off := 0; off < len(s.backup); off += maxData {
			if err := d.write(s.scratch+uint64(off/frontend.SectorSize), s.backup[off:min(off+maxData, len(s.backup))]); err != nil {
				return errVerdict("restoring the scratch range", err)
			}
		}
		if s.has(frontend.BlkFFlush) {
			if r, err := d.do(rawReq{out: header(frontend.TypeFlush, 0), inLen: 1}); err != nil || r.status != frontend.StatusOK {
				return failf("flush after restoring: %v status %s", err, statusName(r.status))
			}
		}
		return passf("%d bytes at sector %d written back", len(s.backup), s.scratch)
	}))
}

// withDev runs fn on a fresh connection; a failed connection is the verdict.
func (s *suite) withDev(o frontend.Options, fn func(d *dev) verdict) verdict {
	d, err := s.connect(o)
	if err != nil {
		return errVerdict("connect", err)
	}
	v := fn(d)
	if err := d.Close(); err != nil && v.outcome == Pass {
		return errVerdict("stopping the rings (GET_VRING_BASE) after the check", err)
	}
	return v
}

// group runs fn on a fresh connection; fn records each named result. If
// the connection fails, every name fails with that error.
func (s *suite) group(o frontend.Options, names []string, fn func(d *dev)) {
	d, err := s.connect(o)
	if err != nil {
		for _, n := range names {
			s.record(n, errVerdict("connect", err))
		}
		return
	}
	fn(d)
	d.Close()
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

func checkHandshake(s *suite) {
	names := []string{"handshake/get-features", "handshake/protocol-features", "handshake/reply-ack",
		"handshake/get-queue-num", "handshake/set-features"}
	c, err := frontend.Dial(s.socket)
	if err != nil {
		for _, n := range names {
			s.record(n, errVerdict("dial", err))
		}
		return
	}
	defer c.Close()
	c.Timeout = s.timeout()
	f, err := c.GetU64(vhostuser.ReqGetFeatures)
	switch {
	case err != nil:
		s.record(names[0], errVerdict("GET_FEATURES", err))
	case f&vhostuser.FeatureVersion1 == 0:
		s.record(names[0], failf("VIRTIO_F_VERSION_1 not offered (%#x)", f))
	case f&vhostuser.FeatureProtocolFeatures == 0:
		s.record(names[0], failf("VHOST_USER_F_PROTOCOL_FEATURES not offered (%#x): no GET_CONFIG", f))
	default:
		s.record(names[0], passf("%#x", f))
	}
	p, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
	switch {
	case err != nil:
		s.record(names[1], errVerdict("GET_PROTOCOL_FEATURES", err))
	case p&vhostuser.ProtoConfig == 0:
		s.record(names[1], failf("PROTOCOL_F_CONFIG not offered (QEMU's vhost-user-blk needs it): %s", protocolNames(p)))
	default:
		s.record(names[1], passf("%s", protocolNames(p)))
	}
	want := p & (vhostuser.ProtoMQ | vhostuser.ProtoReplyAck | vhostuser.ProtoConfig | vhostuser.ProtoConfigureMemSlots)
	if err := c.SetU64(vhostuser.ReqSetProtocolFeatures, want); err != nil {
		s.record(names[2], errVerdict("SET_PROTOCOL_FEATURES", err))
	} else if want&vhostuser.ProtoReplyAck == 0 {
		s.record(names[2], s.notOffered("PROTOCOL_F_REPLY_ACK"))
	} else {
		c.SetProtocolFeatures(want) // SET_OWNER now asks for an ack
		if _, err := c.Call(vhostuser.ReqSetOwner, nil, nil); err != nil {
			s.record(names[2], errVerdict("SET_OWNER with NEED_REPLY", err))
		} else {
			s.record(names[2], passf("SET_OWNER acked 0"))
		}
	}
	if want&vhostuser.ProtoMQ == 0 {
		s.record(names[3], s.notOffered("PROTOCOL_F_MQ"))
	} else if n, err := c.GetU64(vhostuser.ReqGetQueueNum); err != nil {
		s.record(names[3], errVerdict("GET_QUEUE_NUM", err))
	} else if n < 1 || n > 1024 {
		s.record(names[3], failf("GET_QUEUE_NUM = %d", n))
	} else {
		s.record(names[3], passf("%d queues", n))
	}
	if err := c.SetU64(vhostuser.ReqSetFeatures, f&(vhostuser.FeatureVersion1|vhostuser.FeatureProtocolFeatures|frontend.BlkFFlush|frontend.BlkFBlkSize)); err != nil {
		s.record(names[4], errVerdict("SET_FEATURES", err))
	} else if _, err := c.GetU64(vhostuser.ReqGetFeatures); err != nil {
		s.record(names[4], errVerdict("GET_FEATURES after SET_FEATURES", err))
	} else {
		s.record(names[4], pass())
	}
}

func checkConfig(s *suite) {
	le := binary.LittleEndian
	cfg := s.config
	var problems []string
	if s.capacity == 0 {
		problems = append(problems, "capacity 0")
	}
	if s.has(frontend.BlkFBlkSize) {
		if bs := le.Uint32(cfg[cfgBlkSize:]); bs != s.blkSize {
			problems = append(problems, fmt.Sprintf("blk_size %d is not a power of two in 512..65536", bs))
		}
	}
	if s.capacity%s.sectorsPerBlock() != 0 {
		problems = append(problems, fmt.Sprintf("capacity %d not a whole number of %d-byte blocks", s.capacity, s.blkSize))
	}
	if s.has(frontend.BlkFSegMax) && le.Uint32(cfg[cfgSegMax:]) == 0 {
		problems = append(problems, "seg_max 0")
	}
	if s.has(frontend.BlkFMQ) {
		if n := int(le.Uint16(cfg[cfgNumQueues:])); n < 1 || (s.protoHas(vhostuser.ProtoMQ) && n > s.queues) {
			problems = append(problems, fmt.Sprintf("num_queues %d (GET_QUEUE_NUM %d)", n, s.queues))
		}
	}
	if s.has(frontend.BlkFDiscard) && (le.Uint32(cfg[cfgMaxDiscard:]) == 0 || le.Uint32(cfg[cfgMaxDiscardSeg:]) == 0) {
		problems = append(problems, "DISCARD offered with max_discard_sectors or max_discard_seg 0")
	}
	if s.has(frontend.BlkFWriteZeroes) && (le.Uint32(cfg[cfgMaxWZ:]) == 0 || le.Uint32(cfg[cfgMaxWZSeg:]) == 0) {
		problems = append(problems, "WRITE_ZEROES offered with max_write_zeroes_sectors or max_write_zeroes_seg 0")
	}
	if len(problems) > 0 {
		s.record("config/get-config", failf("%s", strings.Join(problems, "; ")))
	} else {
		s.record("config/get-config", passf("capacity %d sectors, blk_size %d", s.capacity, s.blkSize))
	}
	// A front-end may read one field: offset 20, 4 bytes is blk_size.
	s.record("config/read-at-offset", s.withDev(frontend.Options{}, func(d *dev) verdict {
		b, err := d.Conn.GetConfig(cfgBlkSize, 4)
		if err != nil {
			return errVerdict("GET_CONFIG offset 20 size 4", err)
		}
		if !bytes.Equal(b, cfg[cfgBlkSize:cfgBlkSize+4]) {
			return failf("GET_CONFIG offset 20 size 4 = % x, the full read has % x there", b, cfg[cfgBlkSize:cfgBlkSize+4])
		}
		return pass()
	}))
}

func checkRequests(s *suite) {
	names := []string{"io/read", "io/write-read", "io/flush", "io/get-id", "io/unsupported-type",
		"io/read-past-end", "io/read-straddling-end", "io/write-past-end"}
	s.group(frontend.Options{}, names, func(d *dev) {
		n := 16 << 10
		r, err := d.do(readReq(0, n))
		switch {
		case err != nil:
			s.record("io/read", errVerdict("read", err))
		case r.status != frontend.StatusOK:
			s.record("io/read", failf("status %s", statusName(r.status)))
		case r.used != uint32(n+1):
			s.record("io/read", failf("used len %d, want %d (data + status)", r.used, n+1))
		default:
			s.record("io/read", passf("%d bytes at sector 0", n))
		}

		if v, ok := s.needScratch(); !ok {
			s.record("io/write-read", v)
		} else {
			data := pattern(1, 64<<10)
			w, err := d.do(writeReq(s.scratch, data))
			switch {
			case err != nil:
				s.record("io/write-read", errVerdict("write", err))
			case w.status != frontend.StatusOK:
				s.record("io/write-read", failf("write status %s", statusName(w.status)))
			case w.used != 1:
				s.record("io/write-read", failf("write used len %d, want 1 (the status byte)", w.used))
			default:
				got, err := d.read(s.scratch, len(data))
				switch {
				case err != nil:
					s.record("io/write-read", errVerdict("read back", err))
				case !bytes.Equal(got, data):
					s.record("io/write-read", failf("read back differs from the data written"))
				default:
					s.record("io/write-read", passf("64 KiB at sector %d", s.scratch))
				}
			}
		}

		if !s.has(frontend.BlkFFlush) {
			s.record("io/flush", s.notOffered("VIRTIO_BLK_F_FLUSH"))
		} else {
			r, err := d.do(rawReq{out: header(frontend.TypeFlush, 0), inLen: 1})
			s.record("io/flush", wantStatus(r, err, frontend.StatusOK))
		}

		r, err = d.do(rawReq{out: header(frontend.TypeGetID, 0), inLen: frontend.IDBytes + 1})
		if v := wantStatus(r, err, frontend.StatusOK); v.outcome != Pass {
			s.record("io/get-id", v)
		} else {
			id := r.in[:frontend.IDBytes]
			if i := bytes.IndexByte(id, 0); i >= 0 {
				id = id[:i]
			}
			s.record("io/get-id", passf("serial %q", id))
		}

		// Type 0x7e is no request type; even, so no legacy device takes it for a write.
		r, err = d.do(rawReq{out: header(0x7e, 0), inLen: 512 + 1})
		s.record("io/unsupported-type", wantStatus(r, err, frontend.StatusUnsupp))

		blk := int(s.blkSize)
		r, err = d.do(readReq(s.capacity, blk))
		s.record("io/read-past-end", wantStatus(r, err, frontend.StatusIOErr))
		r, err = d.do(readReq(s.capacity-s.sectorsPerBlock(), 2*blk))
		s.record("io/read-straddling-end", wantStatus(r, err, frontend.StatusIOErr))
		if v, ok := s.needScratch(); !ok {
			s.record("io/write-past-end", v)
		} else {
			r, err = d.do(writeReq(s.capacity, make([]byte, blk)))
			s.record("io/write-past-end", wantStatus(r, err, frontend.StatusIOErr))
		}
	})
}

func checkZeroing(s *suite) {
	le := binary.LittleEndian
	type zc struct {
		name  string
		typ   uint32
		feat  uint64
		segs  func(base uint64) []zeroSeg
		want  byte
		zeros bool // the middle must read as zeroes afterwards
		same  bool // the data must be unchanged afterwards
	}
	spb := s.sectorsPerBlock()
	// The range zeroed is the middle half of a 64-sector (32 KiB) run.
	mid := func(flags uint32) func(uint64) []zeroSeg {
		return func(base uint64) []zeroSeg { return []zeroSeg{{base + 16, 32, flags}} }
	}
	two := func(base uint64) []zeroSeg {
		return []zeroSeg{{base + 16, uint32(spb), 0}, {base + 32, uint32(spb), 0}}
	}
	huge := func(base uint64) []zeroSeg { return []zeroSeg{{base, 0xffffffff, 0}} }
	twoWant := func(segOff int) byte {
		if le.Uint32(s.config[segOff:]) >= 2 {
			return frontend.StatusOK
		}
		return frontend.StatusUnsupp
	}
	cases := []zc{
		{"io/write-zeroes", frontend.TypeWriteZeroes, frontend.BlkFWriteZeroes, mid(0), frontend.StatusOK, true, false},
		{"io/write-zeroes-unmap", frontend.TypeWriteZeroes, frontend.BlkFWriteZeroes, mid(1), frontend.StatusOK, true, false},
		{"io/write-zeroes-reserved-flags", frontend.TypeWriteZeroes, frontend.BlkFWriteZeroes, mid(2), frontend.StatusUnsupp, false, true},
		{"io/write-zeroes-two-segments", frontend.TypeWriteZeroes, frontend.BlkFWriteZeroes, two, twoWant(cfgMaxWZSeg), false, false},
		{"io/write-zeroes-num-sectors-max", frontend.TypeWriteZeroes, frontend.BlkFWriteZeroes, huge, frontend.StatusIOErr, false, false},
		{"io/discard", frontend.TypeDiscard, frontend.BlkFDiscard, mid(0), frontend.StatusOK, false, false},
		{"io/discard-unmap-flag", frontend.TypeDiscard, frontend.BlkFDiscard, mid(1), frontend.StatusUnsupp, false, true},
		{"io/discard-reserved-flags", frontend.TypeDiscard, frontend.BlkFDiscard, mid(2), frontend.StatusUnsupp, false, true},
		{"io/discard-two-segments", frontend.TypeDiscard, frontend.BlkFDiscard, two, twoWant(cfgMaxDiscardSeg), false, false},
		{"io/discard-num-sectors-max", frontend.TypeDiscard, frontend.BlkFDiscard, huge, frontend.StatusIOErr, false, false},
	}
	var names []string
	for _, c := range cases {
		names = append(names, c.name)
	}
	if v, ok := s.needScratch(); !ok {
		for _, c := range cases {
			if !s.has(c.feat) {
				v = s.notOffered(featureName(c.feat))
			}
			s.record(c.name, v)
		}
		return
	}
	s.group(frontend.Options{}, names, func(d *dev) {
		for i, c := range cases {
			if !s.has(c.feat) {
				s.record(c.name, s.notOffered(featureName(c.feat)))
				continue
			}
			data := pattern(int64(100+i), 32<<10)
			if err := d.write(s.scratch, data); err != nil {
				s.record(c.name, errVerdict("writing the pattern first", err))
				continue
			}
			r, err := d.do(zeroReq(c.typ, c.segs(s.scratch)...))
			v := wantStatus(r, err, c.want)
			if v.outcome == Pass && (c.zeros || c.same) {
				got, err := d.read(s.scratch, len(data))
				want := data
				if c.zeros {
					want = append([]byte(nil), data...)
					clear(want[16*512 : 48*512])
				}
				switch {
				case err != nil:
					v = errVerdict("read back", err)
				case !bytes.Equal(got, want) && c.zeros:
					v = failf("sectors 16..48 of the run are not zero, or others changed")
				case !bytes.Equal(got, want):
					v = failf("refused with %s but the data changed", statusName(c.want))
				}
			}
			s.record(c.name, v)
		}
	})
}

func featureName(f uint64) string {
	switch f {
	case frontend.BlkFWriteZeroes:
		return "VIRTIO_BLK_F_WRITE_ZEROES"
	case frontend.BlkFDiscard:
		return "VIRTIO_BLK_F_DISCARD"
	case frontend.BlkFRO:
		return "VIRTIO_BLK_F_RO"
	case vhostuser.FeatureRingIndirectDesc:
		return "VIRTIO_RING_F_INDIRECT_DESC"
	case vhostuser.FeatureRingEventIdx:
		return "VIRTIO_RING_F_EVENT_IDX"
	}
	return fmt.Sprintf("feature %#x", f)
}

// every returns cut offsets every step bytes from start up to end.
func every(start, step, end int) []int {
	var out []int
	for o := start; o < end; o += step {
		out = append(out, o)
	}
	return out
}

func checkLayouts(s *suite) {
	const n = 8 << 10
	type layout struct {
		name     string
		need     uint64
		indirect bool
		// Cuts for a read (header only out) and for a write (header+data
		// out, status only in).
		readOut, readIn, writeOut []int
	}
	layouts := []layout{
		{name: "layout/header-split-across-descriptors", readOut: []int{4, 8, 12}, writeOut: []int{4, 8, 12, 16}},
		{name: "layout/header-and-data-in-one-descriptor", readOut: []int{}, writeOut: []int{}},
		{name: "layout/data-and-status-in-one-descriptor", readIn: []int{}},
		{name: "layout/byte-granular-segments", readIn: every(1000, 1000, n+1), writeOut: every(16, 1000, 16+n)},
		{name: "layout/indirect", need: vhostuser.FeatureRingIndirectDesc, indirect: true},
		{name: "layout/indirect-header-split-byte-segments", need: vhostuser.FeatureRingIndirectDesc, indirect: true,
			readOut: []int{8}, readIn: every(700, 700, n+1), writeOut: append([]int{8}, every(16, 700, 16+n)...)},
	}
	var names []string
	for _, l := range layouts {
		names = append(names, l.name)
	}
	s.group(frontend.Options{Indirect: true}, names, func(d *dev) {
		indirect := d.Features&vhostuser.FeatureRingIndirectDesc != 0
		for i, l := range layouts {
			if l.need != 0 && !indirect {
				s.record(l.name, s.notOffered(featureName(l.need)))
				continue
			}
			s.record(l.name, func() verdict {
				sector := uint64(0)
				if s.scratchOK {
					sector = s.scratch
					w, err := d.do(rawReq{out: append(header(frontend.TypeOut, sector), pattern(int64(200+i), n)...),
						inLen: 1, outCuts: l.writeOut, indirect: l.indirect})
					if v := wantStatus(w, err, frontend.StatusOK); v.outcome != Pass {
						return failf("write: %s", v.detail)
					}
				}
				want, err := d.read(sector, n)
				if err != nil {
					return errVerdict("read with the usual layout", err)
				}
				if s.scratchOK && !bytes.Equal(want, pattern(int64(200+i), n)) {
					return failf("the write in this layout did not land")
				}
				r, err := d.do(rawReq{out: header(frontend.TypeIn, sector), inLen: n + 1,
					outCuts: l.readOut, inCuts: l.readIn, indirect: l.indirect})
				switch v := wantStatus(r, err, frontend.StatusOK); {
				case v.outcome != Pass:
					return failf("read: %s", v.detail)
				case !bytes.Equal(r.in[:n], want):
					return failf("read in this layout differs from the usual layout's")
				case r.used != n+1:
					return failf("read used len %d, want %d", r.used, n+1)
				}
				if s.scratchOK {
					return passf("write and read")
				}
				return passf("read only (no writes: %s)", s.scratchWhy)
			}())
		}
	})
}

// checkNotifications checks that completions raise the call eventfd, with
// and without EVENT_IDX, and that a burst of batched requests completes
// when kicks are suppressed by avail_event.
func checkNotifications(s *suite) {
	for _, eventIdx := range []bool{false, true} {
		name := "ring/call-signalled"
		if eventIdx {
			name = "ring/event-idx"
			if !s.has(vhostuser.FeatureRingEventIdx) {
				s.record(name, s.notOffered(featureName(vhostuser.FeatureRingEventIdx)))
				continue
			}
		}
		s.record(name, s.withDev(frontend.Options{EventIdx: eventIdx, QueueSize: 64, MaxIO: 4096}, func(d *dev) verdict {
			q := d.Queues[0]
			total := 0
			for batch := 0; batch < 12; batch++ {
				for i := 0; i < 16; i++ {
					if err := q.Submit(&frontend.Request{Type: frontend.TypeIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)}); err != nil {
						return errVerdict("submit", err)
					}
				}
				q.Kick()
				for q.Inflight() > 0 {
					done, err := q.Wait(s.timeout())
					if err != nil {
						return errVerdict(fmt.Sprintf("batch %d", batch), err)
					}
					for _, r := range done {
						if r.Status != frontend.StatusOK {
							return failf("batch %d: status %s", batch, statusName(r.Status))
						}
					}
					total += len(done)
				}
			}
			// Now strictly: one request, and only the call eventfd is watched.
			d.Queues[0].Ring.WaitCall(0)
			if err := q.Submit(&frontend.Request{Type: frontend.TypeIn, Data: make([]byte, 4096)}); err != nil {
				return errVerdict("submit", err)
			}
			q.Kick()
			fired, err := q.Ring.WaitCall(s.timeout())
			if err != nil {
				return errVerdict("waiting for the call eventfd", err)
			}
			if !fired {
				return failf("%d batched requests completed, but a single completion raised no interrupt within %v", total, s.timeout())
			}
			if _, err := q.Wait(s.timeout()); err != nil {
				return errVerdict("reaping", err)
			}
			return passf("%d requests in batches of 16, then an interrupt for a single one", total+1)
		}))
	}
}

func checkMultiqueue(s *suite) {
	const name = "ring/multiqueue"
	switch {
	case !s.protoHas(vhostuser.ProtoMQ):
		s.record(name, s.notOffered("PROTOCOL_F_MQ"))
		return
	case s.queues < 2:
		s.record(name, skipf("not offered: the back-end has %d queue", s.queues))
		return
	}
	nq := min(s.queues, 4)
	s.record(name, s.withDev(frontend.Options{NumQueues: nq, QueueSize: 32, MaxIO: 4096, Indirect: true, EventIdx: true}, func(d *dev) verdict {
		var wg sync.WaitGroup
		errs := make([]error, nq)
		for qi, q := range d.Queues {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 32; i++ {
					sector := uint64(qi*32+i) * 8
					if s.scratchOK {
						sector = s.scratch + uint64(qi*32+i)*8%(scratchBytes/frontend.SectorSize)
						data := pattern(int64(qi*1000+i), 4096)
						if err := q.Do(&frontend.Request{Type: frontend.TypeOut, Sector: sector, Data: data}, s.timeout()); err != nil {
							errs[qi] = err
							return
						}
						got := make([]byte, 4096)
						if err := q.Do(&frontend.Request{Type: frontend.TypeIn, Sector: sector, Data: got}, s.timeout()); err != nil {
							errs[qi] = err
							return
						}
						if !bytes.Equal(got, data) {
							errs[qi] = fmt.Errorf("sector %d read back differs", sector)
							return
						}
						continue
					}
					if err := q.Do(&frontend.Request{Type: frontend.TypeIn, Sector: sector, Data: make([]byte, 4096)}, s.timeout()); err != nil {
						errs[qi] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		for qi, err := range errs {
			if err != nil {
				return failf("queue %d: %v", qi, err)
			}
		}
		return passf("%d queues concurrently", nq)
	}))
}

func checkMemory(s *suite) {
	readOne := func(d *dev) verdict {
		if _, err := d.read(0, 4096); err != nil {
			return errVerdict("read", err)
		}
		if err := d.Queues[0].Do(&frontend.Request{Type: frontend.TypeIn, Data: make([]byte, 4096)}, s.timeout()); err != nil {
			return errVerdict("read", err)
		}
		return pass()
	}
	s.record("memory/multiple-regions", s.withDev(frontend.Options{Regions: 3}, readOne))
	if !s.protoHas(vhostuser.ProtoConfigureMemSlots) {
		s.record("memory/add-mem-reg", s.notOffered("PROTOCOL_F_CONFIGURE_MEM_SLOTS"))
		return
	}
	s.record("memory/add-mem-reg", s.withDev(frontend.Options{Regions: 2, MemSlots: true}, readOne))
}

// checkStopRing stops a ring with requests in flight (GET_VRING_BASE),
// checks that it stays stopped, and restarts it from the base it gave.
func checkStopRing(s *suite) {
	names := []string{"ring/get-vring-base-running", "ring/stopped-ring-ignores-kicks", "ring/restart-from-base"}
	s.group(frontend.Options{QueueSize: 256, MaxIO: 4096}, names, func(d *dev) {
		q := d.Queues[0]
		const first, later = 48, 8
		for i := 0; i < first; i++ {
			if err := q.Submit(&frontend.Request{Type: frontend.TypeIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)}); err != nil {
				s.record(names[0], errVerdict("submit", err))
				return
			}
		}
		q.Kick()
		base, err := d.Conn.GetVringBase(0)
		if err != nil {
			for _, n := range names {
				s.record(n, errVerdict("GET_VRING_BASE", err))
			}
			return
		}
		// Every request the back-end consumed must be completed by the time
		// it answers (or very soon after): it must not touch the ring later.
		atReply := q.Ring.UsedIdx()
		time.Sleep(200 * time.Millisecond)
		settled := q.Ring.UsedIdx()
		switch {
		case base > first:
			s.record(names[0], failf("base %d, but only %d requests were made available", base, first))
		case settled != uint16(base):
			s.record(names[0], failf("base %d but used idx %d (%d at the reply): consumed requests not completed, or completed after the ring stopped", base, settled, atReply))
		case atReply != settled:
			s.record(names[0], failf("base %d: %d requests completed after GET_VRING_BASE was answered", base, settled-atReply))
		default:
			s.record(names[0], passf("base %d of %d submitted, all consumed completed at the reply", base, first))
		}
		for i := 0; i < later; i++ {
			if err := q.Submit(&frontend.Request{Type: frontend.TypeIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)}); err != nil {
				s.record(names[1], errVerdict("submit", err))
				return
			}
		}
		q.Ring.ForceKick()
		time.Sleep(300 * time.Millisecond)
		if now := q.Ring.UsedIdx(); now != settled {
			s.record(names[1], failf("used idx moved from %d to %d on a stopped ring", settled, now))
		} else {
			s.record(names[1], pass())
		}
		// Restart as QEMU does: NUM, BASE, ADDR, CALL, KICK, ENABLE.
		if err := restartRing(d, q, base); err != nil {
			s.record(names[2], errVerdict("restart", err))
			return
		}
		q.Ring.ForceKick()
		deadline := time.Now().Add(s.timeout())
		for q.Inflight() > 0 && time.Now().Before(deadline) {
			done, err := q.Wait(time.Until(deadline))
			if err != nil {
				break
			}
			for _, r := range done {
				if r.Status != frontend.StatusOK {
					s.record(names[2], failf("status %s after restart", statusName(r.Status)))
					return
				}
			}
		}
		if n := q.Inflight(); n > 0 {
			s.record(names[2], failf("%d requests never completed after restarting from base %d", n, base))
			return
		}
		s.record(names[2], passf("restarted at %d; all %d requests completed", base, first+later))
	})
}

// restartRing sends ENABLE even where PROTOCOL_FEATURES was not
// negotiated, where the frontend's own ring start withholds it: this check
// has always sent the full QEMU sequence, and keeps doing so.
func restartRing(d *dev, q *frontend.Queue, base uint32) error {
	if err := d.SendRing(q, base); err != nil {
		return err
	}
	return d.Conn.SetVringState(vhostuser.ReqSetVringEnable, uint32(q.Index), 1)
}

func checkReadOnly(s *suite) {
	names := []string{"readonly/write-refused", "readonly/write-zeroes-refused"}
	if !s.has(frontend.BlkFRO) {
		for _, n := range names {
			s.record(n, s.notOffered("VIRTIO_BLK_F_RO"))
		}
		return
	}
	s.group(frontend.Options{}, names, func(d *dev) {
		blk := int(s.blkSize)
		cur, err := d.read(0, blk)
		if err != nil {
			for _, n := range names {
				s.record(n, errVerdict("read", err))
			}
			return
		}
		// The bytes written are the ones already there: harmless if obeyed.
		r, err := d.do(writeReq(0, cur))
		s.record(names[0], wantStatus(r, err, frontend.StatusIOErr))
		switch {
		case !s.has(frontend.BlkFWriteZeroes):
			s.record(names[1], s.notOffered("VIRTIO_BLK_F_WRITE_ZEROES"))
		case !bytes.Equal(cur, make([]byte, blk)):
			s.record(names[1], skipf("sector 0 holds data: zeroing it is not risked"))
		default:
			r, err := d.do(zeroReq(frontend.TypeWriteZeroes, zeroSeg{0, uint32(s.sectorsPerBlock()), 0}))
			s.record(names[1], wantStatus(r, err, frontend.StatusIOErr))
		}
	})
}

func checkReconnect(s *suite) {
	sector, n := uint64(0), 16<<10
	var want []byte
	v := s.withDev(frontend.Options{}, func(d *dev) verdict {
		if s.scratchOK {
			sector, want = s.scratch, pattern(300, n)
			if err := d.write(sector, want); err != nil {
				return errVerdict("write before disconnecting", err)
			}
			return pass()
		}
		var err error
		if want, err = d.read(sector, n); err != nil {
			return errVerdict("read before disconnecting", err)
		}
		return pass()
	})
	if v.outcome != Pass {
		s.record("session/reconnect", v)
	} else {
		s.record("session/reconnect", s.withDev(frontend.Options{}, func(d *dev) verdict {
			got, err := d.read(sector, n)
			if err != nil {
				return errVerdict("read after reconnecting", err)
			}
			if !bytes.Equal(got, want) {
				return failf("data differs across the reconnect")
			}
			return pass()
		}))
	}
	// A front-end that dies (QEMU killed) never sends GET_VRING_BASE.
	d, err := s.connect(frontend.Options{MaxIO: 4096})
	if err != nil {
		s.record("session/reconnect-after-drop", errVerdict("connect", err))
		return
	}
	q := d.Queues[0]
	for i := 0; i < 8; i++ {
		q.Submit(&frontend.Request{Type: frontend.TypeIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)})
	}
	q.Kick()
	d.Conn.Close()
	d.Close()
	s.record("session/reconnect-after-drop", s.withDev(frontend.Options{}, func(d *dev) verdict {
		if _, err := d.read(0, 4096); err != nil {
			return errVerdict("read after reconnecting", err)
		}
		return pass()
	}))
}
