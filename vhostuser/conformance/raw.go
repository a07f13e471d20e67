package conformance

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// maxData is the largest data transfer of one raw request.
const maxData = 128 << 10

// errNoCompletion is a request the back-end never completed.
var errNoCompletion = errors.New("no completion")

// dev is a connected device plus guest buffers for raw requests on queue 0:
// chains laid out descriptor by descriptor as the check wants them.
type dev struct {
	*frontend.Device
	timeout    time.Duration
	out, in    gbuf // device-readable and device-writable bytes
	table      gbuf // indirect descriptor table
	rawInUse   bool
	closedOnce bool
}

type gbuf struct {
	gpa uint64
	b   []byte
}

func (s *suite) connect(o frontend.Options) (*dev, error) {
	if o.QueueSize == 0 {
		o.QueueSize = 64
	}
	c, err := frontend.Dial(s.socket)
	if err != nil {
		return nil, err
	}
	c.Timeout = s.timeout()
	fd, err := frontend.Start(c, o)
	if err != nil {
		c.Close()
		return nil, err
	}
	d := &dev{Device: fd, timeout: s.timeout()}
	alloc := func(n uint64) (gbuf, error) {
		gpa, b, err := d.Mem.Alloc(n, 4096)
		return gbuf{gpa, b}, err
	}
	if d.out, err = alloc(16 + maxData + 4096); err == nil {
		if d.in, err = alloc(maxData + 4096); err == nil {
			d.table, err = alloc(16 * 1024)
		}
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Close stops the rings and disconnects (once).
func (d *dev) Close() error {
	if d.closedOnce {
		return nil
	}
	d.closedOnce = true
	return d.Device.Close()
}

// rawReq is one request chain: the device-readable bytes (header, then
// data or discard segments) and how many device-writable bytes follow
// (data, then the status byte). Cuts split each part into descriptors at
// the given offsets; nil means the usual layout (header | data, data |
// status).
type rawReq struct {
	out      []byte
	inLen    int
	outCuts  []int
	inCuts   []int
	indirect bool
}

// rawResp is what the device answered.
type rawResp struct {
	in     []byte // the writable bytes after completion
	used   uint32 // the used element's len
	status byte   // last writable byte
}

func header(typ uint32, sector uint64) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[0:], typ)
	binary.LittleEndian.PutUint64(b[8:], sector)
	return b
}

func readReq(sector uint64, n int) rawReq {
	return rawReq{out: header(virtio.BlkTIn, sector), inLen: n + 1}
}

func writeReq(sector uint64, data []byte) rawReq {
	return rawReq{out: append(header(virtio.BlkTOut, sector), data...), inLen: 1}
}

// zeroSeg is one discard / write-zeroes segment.
type zeroSeg struct {
	sector uint64
	num    uint32
	flags  uint32
}

func zeroReq(typ uint32, segs ...zeroSeg) rawReq {
	b := header(typ, 0)
	for _, z := range segs {
		b = binary.LittleEndian.AppendUint64(b, z.sector)
		b = binary.LittleEndian.AppendUint32(b, z.num)
		b = binary.LittleEndian.AppendUint32(b, z.flags)
	}
	return rawReq{out: b, inLen: 1}
}

type elem struct {
	addr  uint64
	n     uint32
	write bool
}

func split(base uint64, n int, cuts []int, write bool) []elem {
	var els []elem
	prev := 0
	for _, c := range append(cuts, n) {
		if c > prev && c <= n {
			els = append(els, elem{base + uint64(prev), uint32(c - prev), write})
			prev = c
		}
	}
	return els
}

// do submits r on queue 0, which must have nothing in flight, and waits for
// its completion.
func (d *dev) do(r rawReq) (rawResp, error) {
	if len(r.out) > len(d.out.b) || r.inLen > len(d.in.b) {
		return rawResp{}, fmt.Errorf("raw request of %d+%d bytes too large", len(r.out), r.inLen)
	}
	q := d.Queues[0]
	if q.Inflight() != 0 {
		return rawResp{}, errors.New("raw request on a busy queue")
	}
	copy(d.out.b, r.out)
	in := d.in.b[:r.inLen]
	for i := range in {
		in[i] = 0xa5 // the device must overwrite what it claims to
	}
	in[len(in)-1] = 0xff
	outCuts, inCuts := r.outCuts, r.inCuts
	if outCuts == nil {
		outCuts = []int{16}
	}
	if inCuts == nil {
		inCuts = []int{r.inLen - 1}
	}
	els := append(split(d.out.gpa, len(r.out), outCuts, false), split(d.in.gpa, r.inLen, inCuts, true)...)
	ring := q.Ring
	if int(ring.Size) < len(els) && !r.indirect {
		return rawResp{}, fmt.Errorf("%d descriptors on a ring of %d", len(els), ring.Size)
	}
	flags := func(i int, e elem) uint16 {
		var f uint16
		if i+1 < len(els) {
			f |= frontend.DescFNext
		}
		if e.write {
			f |= frontend.DescFWrite
		}
		return f
	}
	if r.indirect {
		t := d.table.b
		for i, e := range els {
			binary.LittleEndian.PutUint64(t[16*i:], e.addr)
			binary.LittleEndian.PutUint32(t[16*i+8:], e.n)
			binary.LittleEndian.PutUint16(t[16*i+12:], flags(i, e))
			binary.LittleEndian.PutUint16(t[16*i+14:], uint16(i+1))
		}
		ring.WriteDesc(0, d.table.gpa, uint32(16*len(els)), frontend.DescFIndirect, 0)
	} else {
		for i, e := range els {
			ring.WriteDesc(uint16(i), e.addr, e.n, flags(i, e), uint16(i+1))
		}
	}
	ring.PushAvail(0)
	ring.Notify()
	deadline := time.Now().Add(d.timeout)
	for {
		if id, n, ok := ring.PopUsed(); ok {
			if id != 0 {
				return rawResp{}, fmt.Errorf("device completed head %d, submitted head 0", id)
			}
			resp := rawResp{in: append([]byte(nil), in...), used: n, status: in[len(in)-1]}
			return resp, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return rawResp{}, fmt.Errorf("%w within %v", errNoCompletion, d.timeout)
		}
		if _, err := ring.WaitCall(min(left, 5*time.Millisecond)); err != nil {
			return rawResp{}, err
		}
	}
}

// read reads n bytes at sector with the usual layout and wants status OK.
func (d *dev) read(sector uint64, n int) ([]byte, error) {
	r, err := d.do(readReq(sector, n))
	if err != nil {
		return nil, err
	}
	if r.status != virtio.BlkSOK {
		return nil, fmt.Errorf("read of %d bytes at sector %d: status %s", n, sector, statusName(r.status))
	}
	return r.in[:n], nil
}

// write writes data at sector with the usual layout and wants status OK.
func (d *dev) write(sector uint64, data []byte) error {
	r, err := d.do(writeReq(sector, data))
	if err != nil {
		return err
	}
	if r.status != virtio.BlkSOK {
		return fmt.Errorf("write of %d bytes at sector %d: status %s", len(data), sector, statusName(r.status))
	}
	return nil
}

func statusName(b byte) string {
	switch b {
	case virtio.BlkSOK:
		return "OK"
	case virtio.BlkSIOErr:
		return "IOERR"
	case virtio.BlkSUnsupp:
		return "UNSUPP"
	case 0xff:
		return "unwritten"
	}
	return fmt.Sprintf("%d", b)
}

// wantStatus checks a response's status byte.
func wantStatus(r rawResp, err error, want byte) finding {
	if err != nil {
		return failf("%v", err)
	}
	if r.status != want {
		return failf("status %s, want %s", statusName(r.status), statusName(want))
	}
	return passf("status %s", statusName(want))
}
