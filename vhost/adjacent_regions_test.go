package vhost_test

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// adjacentGPA is where the test's adjacent regions start in guest-physical
// space: far above the front-end's own memory.
const adjacentGPA = 1 << 40

// TestBufferAcrossAdjacentRegions: guest memory added as regions that are
// back to back in guest-physical space (hot-plugged DIMMs) but mapped one
// by one, and requests whose data buffer starts in one region and ends in
// the next (or the one after). They used to be refused as malformed chains;
// now the buffer is served in pieces, as libvhost-user serves it in iovecs:
// the write lands, and the read fills both sides of each boundary.
func TestBufferAcrossAdjacentRegions(t *testing.T) {
	const page = 4096
	tests := []struct {
		name     string
		indirect bool
		off, n   uint64 // data buffer, from adjacentGPA
		sector   uint64
	}{
		{"across one boundary", false, page - 2048, 4096, 0},
		{"across two boundaries", false, page - 1024, page + 2048, 64},
		{"across one boundary from an indirect table", true, 2*page - 512, 1024, 128},
	}
	lg := logrus.New()
	lg.SetLevel(logrus.WarnLevel)
	s := vhosttest.ServeBTT(t, vhosttest.Options{
		BTTOptions: vhosttest.BTTOptions{Size: 32 << 20, LBASize: 512},
		Config:     blkserve.Config{Server: vhost.Options{Logger: lg}},
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := frontend.Connect(s.Sock, frontend.Options{Indirect: tt.indirect})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			if d.Protocol&vhostuser.ProtoConfigureMemSlots == 0 {
				t.Fatal("back-end did not offer CONFIGURE_MEM_SLOTS")
			}
			if tt.indirect && d.Features&virtio.FRingIndirectDesc == 0 {
				t.Fatal("back-end did not offer INDIRECT_DESC")
			}
			adj, err := frontend.NewAdjacentMemory(3*page, 3, adjacentGPA)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { adj.Close() })
			for i := range adj.Regions {
				if _, err := d.Conn.Call(vhostuser.ReqAddMemReg, vhostuser.EncodeSingleRegion(adj.VhostRegion(i)), []int{adj.FD()}); err != nil {
					t.Fatalf("ADD_MEM_REG %d: %v", i, err)
				}
			}
			data, err := adj.Slice(adjacentGPA+tt.off, tt.n)
			if err != nil {
				t.Fatal(err)
			}
			r := rawOn(t, d, tt.indirect)
			want := pattern(int64(tt.sector)+1, int(tt.n))
			copy(data, want)
			if st, used := r.do(t, virtio.BlkTOut, tt.sector, adjacentGPA+tt.off, uint32(tt.n)); st != virtio.BlkSOK || used != 1 {
				t.Fatalf("write across the boundary: status %d used %d, want OK and 1", st, used)
			}
			got := make([]byte, tt.n)
			if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: tt.sector, Data: got}, ioTimeout); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the write across the boundary did not land as written")
			}
			clear(data)
			if st, used := r.do(t, virtio.BlkTIn, tt.sector, adjacentGPA+tt.off, uint32(tt.n)); st != virtio.BlkSOK || used != uint32(tt.n)+1 {
				t.Fatalf("read across the boundary: status %d used %d, want OK and %d", st, used, tt.n+1)
			}
			if !bytes.Equal(data, want) {
				t.Fatal("the read across the boundary did not fill the buffer")
			}
		})
	}
}

// raw lays out requests descriptor by descriptor on queue 0, with header,
// status and indirect table in the front-end's own memory and the data
// wherever the test says.
type raw struct {
	d        *frontend.Device
	indirect bool
	hdrGPA   uint64
	hdr      []byte // header, then the status byte at 16
	tableGPA uint64
	table    []byte
}

func rawOn(t *testing.T, d *frontend.Device, indirect bool) *raw {
	t.Helper()
	r := &raw{d: d, indirect: indirect}
	var err error
	if r.hdrGPA, r.hdr, err = d.Mem.Alloc(32, 16); err != nil {
		t.Fatal(err)
	}
	if r.tableGPA, r.table, err = d.Mem.Alloc(3*16, 16); err != nil {
		t.Fatal(err)
	}
	return r
}

// do submits header | data (n bytes at dataGPA) | status as head 0 on an
// idle queue 0 and returns the status byte and used length.
func (r *raw) do(t *testing.T, typ uint32, sector, dataGPA uint64, n uint32) (status byte, used uint32) {
	t.Helper()
	binary.LittleEndian.PutUint32(r.hdr[0:], typ)
	binary.LittleEndian.PutUint64(r.hdr[8:], sector)
	r.hdr[16] = 0xff
	var dataFlags uint16
	if typ == virtio.BlkTIn {
		dataFlags = frontend.DescFWrite
	}
	descs := []struct {
		addr  uint64
		n     uint32
		flags uint16
	}{
		{r.hdrGPA, virtio.BlkReqHeaderSize, frontend.DescFNext},
		{dataGPA, n, frontend.DescFNext | dataFlags},
		{r.hdrGPA + 16, 1, frontend.DescFWrite},
	}
	ring := r.d.Queues[0].Ring
	if r.indirect {
		for i, e := range descs {
			b := r.table[16*i:]
			binary.LittleEndian.PutUint64(b[0:], e.addr)
			binary.LittleEndian.PutUint32(b[8:], e.n)
			binary.LittleEndian.PutUint16(b[12:], e.flags)
			binary.LittleEndian.PutUint16(b[14:], uint16(i+1))
		}
		ring.WriteDesc(0, r.tableGPA, uint32(16*len(descs)), frontend.DescFIndirect, 0)
	} else {
		for i, e := range descs {
			ring.WriteDesc(uint16(i), e.addr, e.n, e.flags, uint16(i+1))
		}
	}
	ring.PushAvail(0)
	ring.Notify()
	deadline := time.Now().Add(ioTimeout)
	for {
		if id, used, ok := ring.PopUsed(); ok {
			if id != 0 {
				t.Fatalf("device completed head %d, submitted 0", id)
			}
			return r.hdr[16], used
		}
		if time.Now().After(deadline) {
			t.Fatalf("no completion within %v", ioTimeout)
		}
		if _, err := ring.WaitCall(5 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
}
