package blk

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/nvblk/nvblk/virtio"
	"github.com/nvblk/nvblk/virtq"
)

// request is a virtio-blk request laid out contiguously in "guest memory":
// header | out data | in data | status. cuts splits it into descriptors at
// the given offsets (the readable/writable boundary is always a cut).
type request struct {
	typ    uint32
	sector uint64
	out    []byte // readable payload after the header
	in     int    // writable payload before the status byte
	cuts   []int
	hdrLen int // bytes of header to include; 0 means 16
}

// build returns the chain and the memory behind it; the status byte starts
// as 0xff so an untouched status is visible.
func (r request) build() (*virtq.Chain, []byte) {
	hdrLen := r.hdrLen
	if hdrLen == 0 {
		hdrLen = virtio.BlkReqHeaderSize
	}
	var hdr [virtio.BlkReqHeaderSize]byte
	binary.LittleEndian.PutUint32(hdr[0:], r.typ)
	binary.LittleEndian.PutUint32(hdr[4:], 0x1234) // ioprio: ignored
	binary.LittleEndian.PutUint64(hdr[8:], r.sector)
	mem := slices.Concat(hdr[:hdrLen], r.out, bytes.Repeat([]byte{0xee}, r.in), []byte{0xff})
	boundary := hdrLen + len(r.out)
	cuts := append(slices.Clone(r.cuts), 0, boundary, len(mem))
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	c := &virtq.Chain{}
	for i := 0; i+1 < len(cuts); i++ {
		from, to := cuts[i], cuts[i+1]
		if from < 0 || to > len(mem) {
			continue
		}
		c.Segments = append(c.Segments, virtq.Segment{Buf: mem[from:to:to], Writable: from >= boundary})
	}
	return c, mem
}

func dwz(sector uint64, num, flags uint32) []byte {
	b := make([]byte, virtio.BlkDWZSegSize)
	binary.LittleEndian.PutUint64(b[0:], sector)
	binary.LittleEndian.PutUint32(b[8:], num)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

const testSectors = 64 // disk sectors of the fake disk in every case

func TestHandle(t *testing.T) {
	type env struct {
		disk *fakeDisk
		mem  []byte // request memory after Handle
		in   []byte // the IN payload window of mem
	}
	tests := []struct {
		name    string
		sector  uint32 // disk sector size, default 512
		opts    Options
		setup   func(*fakeDisk)
		req     request
		status  byte // want; 0xff means untouched
		written uint32
		check   func(t *testing.T, e env)
	}{
		{name: "write 3 descriptors", req: request{typ: virtio.BlkTOut, sector: 2, out: pattern(512, 1)}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) { wantDisk(t, e.disk, 2*512, pattern(512, 1)) }},
		{name: "read 3 descriptors", setup: fill(3*512, pattern(512, 9)), req: request{typ: virtio.BlkTIn, sector: 3, in: 512}, status: virtio.BlkSOK, written: 513,
			check: func(t *testing.T, e env) { wantBytes(t, e.in, pattern(512, 9)) }},
		{name: "write 2 descriptors header with data", req: request{typ: virtio.BlkTOut, sector: 1, out: pattern(1024, 2), cuts: []int{528}}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) { wantDisk(t, e.disk, 512, pattern(1024, 2)) }},
		{name: "read 2 descriptors data with status", setup: fill(512, pattern(512, 3)), req: request{typ: virtio.BlkTIn, sector: 1, in: 512}, status: virtio.BlkSOK, written: 513,
			check: func(t *testing.T, e env) { wantBytes(t, e.in, pattern(512, 3)) }},
		{name: "header split across descriptors", req: request{typ: virtio.BlkTOut, sector: 4, out: pattern(512, 4), cuts: []int{1, 5, 11, 15, 300}}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) { wantDisk(t, e.disk, 4*512, pattern(512, 4)) }},
		{name: "read data in odd pieces", setup: fill(0, pattern(2048, 5)), req: request{typ: virtio.BlkTIn, sector: 0, in: 2048, cuts: []int{17, 100, 1000, 1001, 2063}}, status: virtio.BlkSOK, written: 2049,
			check: func(t *testing.T, e env) { wantBytes(t, e.in, pattern(2048, 5)) }},
		{name: "read data all in one descriptor with header", setup: fill(0, pattern(512, 6)), req: request{typ: virtio.BlkTIn, in: 512, cuts: []int{528}}, status: virtio.BlkSOK, written: 513,
			check: func(t *testing.T, e env) { wantBytes(t, e.in, pattern(512, 6)) }},
		{name: "read zero copy into guest memory", req: request{typ: virtio.BlkTIn, in: 1024, cuts: []int{16 + 512}}, status: virtio.BlkSOK, written: 1025,
			check: func(t *testing.T, e env) {
				if e.disk.lastN != 2 || e.disk.lastIOV[0] != &e.in[0] || e.disk.lastIOV[1] != &e.in[512] {
					t.Fatal("iov does not alias the request's writable segments")
				}
			}},
		{name: "write zero copy from guest memory", req: request{typ: virtio.BlkTOut, out: pattern(512, 7), cuts: []int{10}}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) {
				if e.disk.lastN != 1 || e.disk.lastIOV[0] != &e.mem[16] {
					t.Fatal("iov does not alias the request's readable segment")
				}
			}},
		{name: "read zero length", req: request{typ: virtio.BlkTIn, sector: 5}, status: virtio.BlkSOK, written: 1},
		{name: "write extra writable bytes ignored", req: request{typ: virtio.BlkTOut, out: pattern(512, 8), in: 8}, status: virtio.BlkSOK, written: 1},
		{name: "read 4k sector disk", sector: 4096, setup: fill(4096, pattern(4096, 10)), req: request{typ: virtio.BlkTIn, sector: 8, in: 4096}, status: virtio.BlkSOK, written: 4097,
			check: func(t *testing.T, e env) { wantBytes(t, e.in, pattern(4096, 10)) }},
		{name: "write 4k sector disk", sector: 4096, req: request{typ: virtio.BlkTOut, sector: 16, out: pattern(8192, 11)}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) { wantDisk(t, e.disk, 2*4096, pattern(8192, 11)) }},
		{name: "read last sector", req: request{typ: virtio.BlkTIn, sector: testSectors - 1, in: 512}, status: virtio.BlkSOK, written: 513},
		{name: "read sector past capacity", req: request{typ: virtio.BlkTIn, sector: testSectors, in: 512}, status: virtio.BlkSIOErr, written: 1},
		{name: "write straddling capacity", req: request{typ: virtio.BlkTOut, sector: testSectors - 1, out: make([]byte, 1024)}, status: virtio.BlkSIOErr, written: 1},
		{name: "read sector overflowing u64", req: request{typ: virtio.BlkTIn, sector: ^uint64(0), in: 512}, status: virtio.BlkSIOErr, written: 1},
		{name: "write length not multiple of 512", req: request{typ: virtio.BlkTOut, out: make([]byte, 511)}, status: virtio.BlkSIOErr, written: 1},
		{name: "read length not multiple of 512", req: request{typ: virtio.BlkTIn, in: 513}, status: virtio.BlkSIOErr, written: 1},
		{name: "read length not multiple of disk sector", sector: 4096, req: request{typ: virtio.BlkTIn, in: 512}, status: virtio.BlkSIOErr, written: 1},
		{name: "write sector not aligned to disk sector", sector: 4096, req: request{typ: virtio.BlkTOut, sector: 1, out: make([]byte, 4096)}, status: virtio.BlkSIOErr, written: 1},
		{name: "write on read-only disk", setup: func(d *fakeDisk) { d.ro = true }, req: request{typ: virtio.BlkTOut, out: make([]byte, 512)}, status: virtio.BlkSIOErr, written: 1},
		{name: "write on forced read-only", opts: Options{ReadOnly: true}, req: request{typ: virtio.BlkTOut, out: make([]byte, 512)}, status: virtio.BlkSIOErr, written: 1},
		{name: "read on read-only", opts: Options{ReadOnly: true}, req: request{typ: virtio.BlkTIn, in: 512}, status: virtio.BlkSOK, written: 513},
		{name: "read disk error", setup: func(d *fakeDisk) { d.failAll = true }, req: request{typ: virtio.BlkTIn, in: 512}, status: virtio.BlkSIOErr, written: 1},
		{name: "write disk error", setup: func(d *fakeDisk) { d.failAll = true }, req: request{typ: virtio.BlkTOut, out: make([]byte, 512)}, status: virtio.BlkSIOErr, written: 1},
		{name: "flush", req: request{typ: virtio.BlkTFlush}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) {
				if e.disk.flushes != 1 {
					t.Fatalf("flushes %d", e.disk.flushes)
				}
			}},
		{name: "flush error", setup: func(d *fakeDisk) { d.failAll = true }, req: request{typ: virtio.BlkTFlush}, status: virtio.BlkSIOErr, written: 1},
		{name: "get id", opts: Options{Serial: "nvblk-0001"}, req: request{typ: virtio.BlkTGetID, in: 20}, status: virtio.BlkSOK, written: 21,
			check: func(t *testing.T, e env) { wantBytes(t, e.in, append([]byte("nvblk-0001"), make([]byte, 10)...)) }},
		{name: "get id 20 bytes unterminated", opts: Options{Serial: "0123456789abcdefghij"}, req: request{typ: virtio.BlkTGetID, in: 20}, status: virtio.BlkSOK, written: 21,
			check: func(t *testing.T, e env) { wantBytes(t, e.in, []byte("0123456789abcdefghij")) }},
		{name: "get id serial truncated", opts: Options{Serial: "0123456789abcdefghijKLMN"}, req: request{typ: virtio.BlkTGetID, in: 24}, status: virtio.BlkSOK, written: 21,
			check: func(t *testing.T, e env) {
				wantBytes(t, e.in, append([]byte("0123456789abcdefghij"), 0xee, 0xee, 0xee, 0xee))
			}},
		{name: "get id short buffer split", opts: Options{Serial: "abcdef"}, req: request{typ: virtio.BlkTGetID, in: 4, cuts: []int{18}}, status: virtio.BlkSOK, written: 5,
			check: func(t *testing.T, e env) { wantBytes(t, e.in, []byte("abcd")) }},
		{name: "get id no buffer", req: request{typ: virtio.BlkTGetID}, status: virtio.BlkSIOErr, written: 1},
		{name: "unsupported scsi", req: request{typ: 2}, status: virtio.BlkSUnsupp, written: 1},
		{name: "unsupported get lifetime", req: request{typ: 10, in: 12}, status: virtio.BlkSUnsupp, written: 1},
		{name: "unsupported secure erase", req: request{typ: 14, out: dwz(0, 1, 0)}, status: virtio.BlkSUnsupp, written: 1},
		{name: "unsupported legacy barrier", req: request{typ: 0x80000001, out: make([]byte, 512)}, status: virtio.BlkSUnsupp, written: 1},
		{name: "discard", setup: fill(0, pattern(1024, 12)), req: request{typ: virtio.BlkTDiscard, out: dwz(1, 1, 0)}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) {
				wantDisk(t, e.disk, 0, slices.Concat(pattern(512, 12), make([]byte, 512)))
				wantZeroes(t, e.disk, [2]uint64{1, 1})
			}},
		{name: "discard segment split across descriptors", req: request{typ: virtio.BlkTDiscard, out: dwz(2, 3, 0), cuts: []int{20, 27, 30}}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) { wantZeroes(t, e.disk, [2]uint64{2, 3}) }},
		{name: "write zeroes", setup: fill(0, pattern(1024, 13)), req: request{typ: virtio.BlkTWriteZeroes, out: dwz(0, 1, 0)}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) {
				wantDisk(t, e.disk, 0, slices.Concat(make([]byte, 512), pattern(1024, 13)[512:]))
			}},
		{name: "write zeroes unmap", req: request{typ: virtio.BlkTWriteZeroes, out: dwz(4, 2, virtio.BlkDWZFlagUnmap)}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) { wantZeroes(t, e.disk, [2]uint64{4, 2}) }},
		{name: "write zeroes 4k sector disk", sector: 4096, req: request{typ: virtio.BlkTWriteZeroes, out: dwz(16, 16, 0)}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) { wantZeroes(t, e.disk, [2]uint64{2, 2}) }},
		{name: "write zeroes zero sectors", req: request{typ: virtio.BlkTWriteZeroes, out: dwz(3, 0, 0)}, status: virtio.BlkSOK, written: 1,
			check: func(t *testing.T, e env) { wantZeroes(t, e.disk) }},
		{name: "discard two segments", req: request{typ: virtio.BlkTDiscard, out: slices.Concat(dwz(0, 1, 0), dwz(1, 1, 0))}, status: virtio.BlkSUnsupp, written: 1},
		{name: "write zeroes two segments", req: request{typ: virtio.BlkTWriteZeroes, out: slices.Concat(dwz(0, 1, 0), dwz(1, 1, 0))}, status: virtio.BlkSUnsupp, written: 1},
		{name: "discard max sectors", req: request{typ: virtio.BlkTDiscard, out: dwz(0, 0xffffffff, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "write zeroes max sectors", req: request{typ: virtio.BlkTWriteZeroes, out: dwz(0, 0xffffffff, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "write zeroes over limit", opts: Options{MaxWriteZeroesSectors: 8}, req: request{typ: virtio.BlkTWriteZeroes, out: dwz(0, 9, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "discard past capacity", req: request{typ: virtio.BlkTDiscard, out: dwz(testSectors+1, 1, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "write zeroes straddling capacity", req: request{typ: virtio.BlkTWriteZeroes, out: dwz(testSectors-1, 2, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "discard reserved flags", req: request{typ: virtio.BlkTDiscard, out: dwz(0, 1, ^uint32(virtio.BlkDWZFlagUnmap))}, status: virtio.BlkSUnsupp, written: 1},
		{name: "discard unmap flag", req: request{typ: virtio.BlkTDiscard, out: dwz(0, 1, virtio.BlkDWZFlagUnmap)}, status: virtio.BlkSUnsupp, written: 1},
		{name: "write zeroes reserved flags", req: request{typ: virtio.BlkTWriteZeroes, out: dwz(0, 1, ^uint32(virtio.BlkDWZFlagUnmap))}, status: virtio.BlkSUnsupp, written: 1},
		{name: "discard truncated segment", req: request{typ: virtio.BlkTDiscard, out: dwz(0, 1, 0)[:8]}, status: virtio.BlkSIOErr, written: 1},
		{name: "discard no segment", req: request{typ: virtio.BlkTDiscard}, status: virtio.BlkSIOErr, written: 1},
		{name: "discard on read-only", opts: Options{ReadOnly: true}, req: request{typ: virtio.BlkTDiscard, out: dwz(0, 1, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "write zeroes misaligned on 4k disk", sector: 4096, req: request{typ: virtio.BlkTWriteZeroes, out: dwz(1, 8, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "discard partial sector on 4k disk", sector: 4096, req: request{typ: virtio.BlkTDiscard, out: dwz(0, 1, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "write zeroes disk error", setup: func(d *fakeDisk) { d.failAll = true }, req: request{typ: virtio.BlkTWriteZeroes, out: dwz(0, 1, 0)}, status: virtio.BlkSIOErr, written: 1},
		{name: "header shorter than 16 bytes", req: request{typ: virtio.BlkTIn, hdrLen: 15, in: 0}, status: 0xff, written: 0},
		{name: "header runs into writable", req: request{typ: virtio.BlkTIn, hdrLen: 8, in: 512}, status: 0xff, written: 0},
		{name: "no header at all", req: request{typ: virtio.BlkTIn, hdrLen: -1}, status: 0xff, written: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := tt.sector
			if ss == 0 {
				ss = 512
			}
			disk := newFakeDisk(ss, testSectors)
			if tt.setup != nil {
				tt.setup(disk)
			}
			h := NewDevice(disk, tt.opts).NewHandler()
			req := tt.req
			var c *virtq.Chain
			var mem []byte
			if req.hdrLen < 0 {
				mem = []byte{0xff}
				c = &virtq.Chain{Segments: []virtq.Segment{{Buf: mem, Writable: true}}}
			} else {
				c, mem = req.build()
			}
			got := h.Handle(c).Written
			if got != tt.written {
				t.Errorf("written %d, want %d", got, tt.written)
			}
			if st := mem[len(mem)-1]; st != tt.status {
				t.Errorf("status %d, want %d", st, tt.status)
			}
			if disk.contract != nil {
				t.Errorf("disk contract violated: %v", disk.contract)
			}
			if tt.check != nil {
				hdr := req.hdrLen
				if hdr == 0 {
					hdr = virtio.BlkReqHeaderSize
				}
				start := hdr + len(req.out)
				tt.check(t, env{disk: disk, mem: mem, in: mem[start : start+req.in]})
			}
		})
	}
}

// TestHandleNoStatus: chains with nowhere to put a status are not answered
// and nothing is written.
func TestHandleNoStatus(t *testing.T) {
	hdr := make([]byte, virtio.BlkReqHeaderSize)
	tests := []struct {
		name string
		segs []virtq.Segment
	}{
		{"empty chain", nil},
		{"no writable segment", []virtq.Segment{{Buf: hdr}, {Buf: make([]byte, 513)}}},
		{"last writable zero length", []virtq.Segment{{Buf: hdr}, {Buf: make([]byte, 512), Writable: true}, {Writable: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disk := newFakeDisk(512, testSectors)
			h := NewDevice(disk, Options{}).NewHandler()
			before := make([][]byte, len(tt.segs))
			for i, s := range tt.segs {
				before[i] = slices.Clone(s.Buf)
			}
			if n := h.Handle(&virtq.Chain{Segments: tt.segs}).Written; n != 0 {
				t.Fatalf("written %d, want 0", n)
			}
			for i, s := range tt.segs {
				if !bytes.Equal(s.Buf, before[i]) {
					t.Fatalf("segment %d modified", i)
				}
			}
		})
	}
}

func TestHandlerReuse(t *testing.T) {
	disk := newFakeDisk(512, testSectors)
	h := NewDevice(disk, Options{}).NewHandler()
	c, _ := request{typ: virtio.BlkTOut, sector: 7, out: pattern(1536, 20), cuts: []int{100, 600}}.build()
	if h.Handle(c).Written != 1 {
		t.Fatal("write failed")
	}
	c, mem := request{typ: virtio.BlkTIn, sector: 7, in: 1536, cuts: []int{16 + 3}}.build()
	if h.Handle(c).Written != 1537 || mem[len(mem)-1] != virtio.BlkSOK {
		t.Fatal("read failed")
	}
	wantBytes(t, mem[16:16+1536], pattern(1536, 20))
	for _, b := range h.iov[:cap(h.iov)] {
		if b != nil {
			t.Fatal("handler keeps references to guest memory between requests")
		}
	}
}

func fill(off int, data []byte) func(*fakeDisk) {
	return func(d *fakeDisk) { copy(d.data[off:], data) }
}

func wantBytes(t *testing.T, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("bytes differ:\n got %x\nwant %x", head(got), head(want))
	}
}

func wantDisk(t *testing.T, d *fakeDisk, off int, want []byte) {
	t.Helper()
	wantBytes(t, d.data[off:off+len(want)], want)
}

func wantZeroes(t *testing.T, d *fakeDisk, want ...[2]uint64) {
	t.Helper()
	if !slices.Equal(d.zeroes, want) {
		t.Fatalf("WriteZeroes calls %v, want %v", d.zeroes, want)
	}
}

func head(b []byte) []byte { return b[:min(len(b), 32)] }
