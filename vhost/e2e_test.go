package vhost_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

const ioTimeout = 5 * time.Second

func connect(t *testing.T, e *env, o frontend.Options) *frontend.Device {
	t.Helper()
	d, err := frontend.Connect(e.sock, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func pattern(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func TestEndToEndRequestTypes(t *testing.T) {
	for _, o := range []struct {
		name string
		o    frontend.Options
		ss   uint32
		poll time.Duration
	}{
		{"plain", frontend.Options{}, 512, 0},
		{"indirect", frontend.Options{Indirect: true}, 512, 0},
		{"eventidx+segments", frontend.Options{EventIdx: true, SegSize: 4000, QueueSize: 128}, 4096, 0},
		{"memslots+3regions+poll", frontend.Options{MemSlots: true, Regions: 3, Indirect: true, EventIdx: true}, 4096, 50 * time.Microsecond},
	} {
		t.Run(o.name, func(t *testing.T) {
			e := startEnv(t, envOpts{ss: o.ss, poll: o.poll})
			d := connect(t, e, o.o)
			q := d.Queues[0]

			data := pattern(1, 64<<10)
			if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 16, Data: data}, ioTimeout); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(e.disk.bytes(16*512, len(data)), data) {
				t.Fatal("disk does not hold the data written through the socket")
			}
			got := make([]byte, len(data))
			rd := &frontend.Request{Type: virtio.BlkTIn, Sector: 16, Data: got}
			if err := q.Do(rd, ioTimeout); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) || rd.Written != uint32(len(data))+1 {
				t.Fatalf("read back differs (used len %d)", rd.Written)
			}
			before := e.disk.flushes.Load()
			if err := q.Do(&frontend.Request{Type: virtio.BlkTFlush}, ioTimeout); err != nil {
				t.Fatal(err)
			}
			if e.disk.flushes.Load() == before {
				t.Fatal("FLUSH did not reach the disk")
			}
			id := make([]byte, virtio.BlkIDBytes)
			if err := q.Do(&frontend.Request{Type: virtio.BlkTGetID, Data: id}, ioTimeout); err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(id, []byte("nvblk-test-serial")) {
				t.Fatalf("GET_ID = %q", id)
			}
			for _, typ := range []uint32{virtio.BlkTWriteZeroes, virtio.BlkTDiscard} {
				if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 16, Data: data}, ioTimeout); err != nil {
					t.Fatal(err)
				}
				if err := q.Do(&frontend.Request{Type: typ, Sector: 24, NumSectors: 16}, ioTimeout); err != nil {
					t.Fatalf("type %d: %v", typ, err)
				}
				want := append([]byte(nil), data...)
				clear(want[8*512 : 24*512])
				if !bytes.Equal(e.disk.bytes(16*512, len(data)), want) {
					t.Fatalf("type %d did not zero sectors 24..40 only", typ)
				}
			}
			// Past the end of the disk: an error status, not a hang.
			r := &frontend.Request{Type: virtio.BlkTIn, Sector: d.Capacity(), Data: make([]byte, 4096)}
			if err := q.Do(r, ioTimeout); err == nil || r.Status != virtio.BlkSIOErr {
				t.Fatalf("read past end: %v status %d", err, r.Status)
			}
		})
	}
}

func TestEndToEndMultiqueue(t *testing.T) {
	e := startEnv(t, envOpts{queues: 2})
	d := connect(t, e, frontend.Options{NumQueues: 2, QueueSize: 32, Indirect: true, EventIdx: true})
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for qi, q := range d.Queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each queue keeps many requests in flight over its own half.
			base := uint64(qi) * 2048
			var reqs []*frontend.Request
			for i := 0; i < 64; i++ {
				r := &frontend.Request{Type: virtio.BlkTOut, Sector: base + uint64(i)*8, Data: pattern(int64(qi*1000+i), 4096)}
				for {
					err := q.Submit(r)
					if err == nil {
						break
					}
					q.Kick()
					if _, err := q.Wait(ioTimeout); err != nil {
						errs <- err
						return
					}
				}
				reqs = append(reqs, r)
			}
			q.Kick()
			for q.Inflight() > 0 {
				if _, err := q.Wait(ioTimeout); err != nil {
					errs <- err
					return
				}
			}
			for i, r := range reqs {
				if r.Status != virtio.BlkSOK {
					errs <- fmt.Errorf("queue %d request %d: status %d", qi, i, r.Status)
					return
				}
				got := make([]byte, 4096)
				if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: r.Sector, Data: got}, ioTimeout); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, r.Data) {
					errs <- fmt.Errorf("queue %d request %d: read back differs", qi, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestEndToEndReadOnly(t *testing.T) {
	e := startEnv(t, envOpts{readOnly: true})
	d := connect(t, e, frontend.Options{})
	if d.Features&virtio.BlkFRO == 0 {
		t.Fatal("read-only device does not offer VIRTIO_BLK_F_RO")
	}
	q := d.Queues[0]
	w := &frontend.Request{Type: virtio.BlkTOut, Sector: 0, Data: pattern(2, 4096)}
	if err := q.Do(w, ioTimeout); err == nil || w.Status == virtio.BlkSOK {
		t.Fatalf("write on read-only device: %v status %d", err, w.Status)
	}
	if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 0, Data: make([]byte, 4096)}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.disk.bytes(0, 4096), make([]byte, 4096)) {
		t.Fatal("read-only disk was written")
	}
}

// TestEndToEndReconnect: the front-end goes away and a new one sees the data.
func TestEndToEndReconnect(t *testing.T) {
	e := startEnv(t, envOpts{})
	data := pattern(3, 8192)
	d := connect(t, e, frontend.Options{})
	if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 100, Data: data}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	bases, err := d.Stop()
	if err != nil || bases[0] != 1 {
		t.Fatalf("GET_VRING_BASE = %v, %v; want [1]", bases, err)
	}
	d.Close()
	d2 := connect(t, e, frontend.Options{NumQueues: 2})
	got := make([]byte, len(data))
	if err := d2.Queues[1].Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 100, Data: got}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data lost across reconnect")
	}
}

// TestEndToEndBrokenRing: a corrupt avail index stops that queue and sets
// DEVICE_NEEDS_RESET; the other queue goes on.
func TestEndToEndBrokenRing(t *testing.T) {
	e := startEnv(t, envOpts{queues: 2})
	d := connect(t, e, frontend.Options{NumQueues: 2})
	r0 := d.Queues[0].Ring
	r0.SetAvailIdx(r0.Size + 5)
	r0.ForceKick()
	waitNeedsReset(t, d)
	if err := d.Queues[1].Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 0, Data: pattern(4, 512)}, ioTimeout); err != nil {
		t.Fatalf("healthy queue: %v", err)
	}
}

// TestEndToEndMemoryChange: regions come and go while rings run.
func TestEndToEndMemoryChange(t *testing.T) {
	e := startEnv(t, envOpts{})
	d := connect(t, e, frontend.Options{})
	q := d.Queues[0]
	if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 0, Data: pattern(5, 4096)}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	extra := newMem(t, 1<<20, 1)
	r := extra.VhostRegion(0)
	r.GuestAddr = 1 << 40
	if _, err := d.Conn.Call(vhostuser.ReqAddMemReg, vhostuser.EncodeSingleRegion(r), []int{extra.FD()}); err != nil {
		t.Fatal(err)
	}
	if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: 8, Data: pattern(6, 4096)}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Conn.Call(vhostuser.ReqRemMemReg, vhostuser.EncodeSingleRegion(r), nil); err != nil {
		t.Fatal(err)
	}
	// SET_MEM_TABLE with the same layout replaces every mapping.
	fds := []int{d.Mem.FD()}
	if _, err := d.Conn.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(d.Mem.VhostRegions()), fds); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := q.Do(&frontend.Request{Type: virtio.BlkTIn, Sector: 8, Data: got}, ioTimeout); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pattern(6, 4096)) {
		t.Fatal("read back differs after memory changes")
	}
}

// TestShutdownDrains: Shutdown waits for queued requests and flushes.
func TestShutdownDrains(t *testing.T) {
	e := startEnv(t, envOpts{})
	d := connect(t, e, frontend.Options{QueueSize: 64, Indirect: true})
	q := d.Queues[0]
	for i := 0; i < 32; i++ {
		if err := q.Submit(&frontend.Request{Type: virtio.BlkTOut, Sector: uint64(i) * 8, Data: pattern(int64(i), 4096)}); err != nil {
			t.Fatal(err)
		}
	}
	q.Kick()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if e.disk.flushes.Load() == 0 {
		t.Fatal("Shutdown did not flush")
	}
	// Whatever the worker had taken was completed and published.
	done, _ := q.Reap()
	for _, r := range done {
		if r.Status != virtio.BlkSOK {
			t.Fatalf("request at %d: status %d", r.Sector, r.Status)
		}
	}
}

// TestEndToEndBTT runs the socket against the real engine on a pmem file.
func TestEndToEndBTT(t *testing.T) {
	fdcheck.Check(t)
	lg := logrus.New()
	lg.SetLevel(logrus.WarnLevel)
	s := vhosttest.ServeBTT(t, vhosttest.Options{
		BTTOptions: vhosttest.BTTOptions{Size: 64 << 20, LBASize: 4096},
		Config:     blkserve.Config{NumQueues: 2, Serial: "btt", Server: vhost.Options{Logger: lg}},
	})

	d, err := frontend.Connect(s.Sock, frontend.Options{NumQueues: 2, Indirect: true, EventIdx: true, SegSize: 3000})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(7, 128<<10)
	var wg sync.WaitGroup
	for qi, q := range d.Queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sector := uint64(qi) * 4096
			if err := q.Do(&frontend.Request{Type: virtio.BlkTOut, Sector: sector, Data: data}, ioTimeout); err != nil {
				t.Error(err)
				return
			}
			if err := q.Do(&frontend.Request{Type: virtio.BlkTFlush}, ioTimeout); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Server.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Read back with the engine directly, not through the socket.
	for qi := 0; qi < 2; qi++ {
		got := make([]byte, len(data))
		if err := s.Dev.ReadV(uint64(qi)*4096*512/4096, [][]byte{got}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("queue %d: btt holds different data", qi)
		}
	}
}
