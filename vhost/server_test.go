package vhost_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// memDisk is an in-memory blk.Disk.
type memDisk struct {
	mu       sync.Mutex // guards data
	data     []byte
	ss       uint32
	ro       bool
	flushes  atomic.Int64
	writeErr error
}

func newMemDisk(size int, ss uint32) *memDisk { return &memDisk{data: make([]byte, size), ss: ss} }

func (d *memDisk) rng(lba uint64, n int) (int, error) {
	off := lba * uint64(d.ss)
	if n%int(d.ss) != 0 || off+uint64(n) > uint64(len(d.data)) || off+uint64(n) < off {
		return 0, errors.New("memdisk: out of range")
	}
	return int(off), nil
}

func iovLen(iov [][]byte) (n int) {
	for _, b := range iov {
		n += len(b)
	}
	return n
}

func (d *memDisk) ReadV(lba uint64, iov [][]byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	off, err := d.rng(lba, iovLen(iov))
	if err != nil {
		return err
	}
	for _, b := range iov {
		off += copy(b, d.data[off:])
	}
	return nil
}

func (d *memDisk) WriteV(lba uint64, iov [][]byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ro {
		return errors.New("memdisk: read-only")
	}
	off, err := d.rng(lba, iovLen(iov))
	if err != nil {
		return err
	}
	for _, b := range iov {
		off += copy(d.data[off:], b)
	}
	return nil
}

func (d *memDisk) WriteZeroes(lba, n uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	off, err := d.rng(lba, int(n*uint64(d.ss)))
	if err != nil {
		return err
	}
	clear(d.data[off : off+int(n*uint64(d.ss))])
	return nil
}

func (d *memDisk) Flush() error       { d.flushes.Add(1); return nil }
func (d *memDisk) SectorSize() uint32 { return d.ss }
func (d *memDisk) NumSectors() uint64 { return uint64(len(d.data)) / uint64(d.ss) }
func (d *memDisk) ReadOnly() bool     { return d.ro }
func (d *memDisk) bytes(off, n int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.data[off:off+n]...)
}

type env struct {
	sock string
	srv  *vhost.Server
	disk *memDisk
	logs *logtest.Hook // the server's warnings and errors
}

type envOpts struct {
	queues         uint16
	readOnly       bool
	poll           time.Duration
	ss             uint32
	messageTimeout time.Duration
}

func startEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	fdcheck.Check(t)
	if o.queues == 0 {
		o.queues = 2
	}
	if o.ss == 0 {
		o.ss = 512
	}
	disk := newMemDisk(4<<20, o.ss)
	lg := logrus.New()
	lg.SetLevel(logrus.WarnLevel)
	if testing.Verbose() {
		lg.SetLevel(logrus.DebugLevel)
	}
	hook := logtest.NewLocal(lg)
	srv, sock := vhosttest.Serve(t, disk, blk.Options{NumQueues: o.queues, ReadOnly: o.readOnly, Serial: "nvblk-test-serial"},
		vhost.Options{PollDuration: o.poll, Logger: lg, MessageTimeout: o.messageTimeout, Migration: true})
	return &env{sock: sock, srv: srv, disk: disk, logs: hook}
}

func (e *env) dial(t *testing.T) *frontend.Conn {
	t.Helper()
	c, err := frontend.Dial(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Timeout = 5 * time.Second
	t.Cleanup(func() { c.Close() })
	return c
}

// negotiate does the feature part of the handshake with REPLY_ACK.
func negotiate(t *testing.T, c *frontend.Conn) {
	t.Helper()
	f, err := c.GetU64(vhostuser.ReqGetFeatures)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetU64(vhostuser.ReqSetProtocolFeatures, p); err != nil {
		t.Fatal(err)
	}
	c.SetProtocolFeatures(p)
	if _, err := c.Call(vhostuser.ReqSetOwner, nil, nil); err != nil {
		t.Fatal(err)
	}
	// The rings these cases set up by hand are split rings.
	if err := c.SetU64(vhostuser.ReqSetFeatures, f&^virtio.FRingPacked); err != nil {
		t.Fatal(err)
	}
}

func newMem(t *testing.T, size uint64, n int) *frontend.Memory {
	m, err := frontend.NewMemory(size, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// expectDropped checks that the server closed the connection.
func expectDropped(t *testing.T, c *frontend.Conn) {
	t.Helper()
	if _, _, err := c.Recv(); err == nil {
		t.Fatal("connection still open; want it dropped")
	}
}

func eventfd(t *testing.T) int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestProtocol(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, e *env, c *frontend.Conn)
	}{
		{"handshake", func(t *testing.T, e *env, c *frontend.Conn) {
			f, err := c.GetU64(vhostuser.ReqGetFeatures)
			if err != nil {
				t.Fatal(err)
			}
			if f&vhostuser.FeatureProtocolFeatures == 0 || f&virtio.FVersion1 == 0 || f&vhostuser.FeatureLogAll == 0 {
				t.Fatalf("features %#x lack PROTOCOL_FEATURES, VERSION_1 or LOG_ALL", f)
			}
			p, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
			if err != nil {
				t.Fatal(err)
			}
			want := vhostuser.ProtoMQ | vhostuser.ProtoReplyAck | vhostuser.ProtoConfig | vhostuser.ProtoConfigureMemSlots | vhostuser.ProtoResetDevice | vhostuser.ProtoStatus |
				vhostuser.ProtoInflightSHMFD | vhostuser.ProtoLogSHMFD | vhostuser.ProtoBackendReq
			if p != want {
				t.Fatalf("protocol features %#x, want %#x", p, want)
			}
			negotiate(t, c)
			if n, err := c.GetU64(vhostuser.ReqGetQueueNum); err != nil || n != 2 {
				t.Fatalf("GET_QUEUE_NUM = %d, %v", n, err)
			}
			if n, err := c.GetU64(vhostuser.ReqGetMaxMemSlots); err != nil || n != 509 {
				t.Fatalf("GET_MAX_MEM_SLOTS = %d, %v", n, err)
			}
			cfg, err := c.GetConfig(0, 60)
			if err != nil {
				t.Fatal(err)
			}
			if got := le64(cfg); got != 4<<20/512 {
				t.Fatalf("capacity %d", got)
			}
		}},
		{"reply flags are 0x5", func(t *testing.T, e *env, c *frontend.Conn) {
			for _, req := range []vhostuser.Request{vhostuser.ReqGetFeatures, vhostuser.ReqGetProtocolFeatures, vhostuser.ReqGetQueueNum} {
				if err := c.SendRaw(vhostuser.EncodeMessage(req, vhostuser.FlagVersion, nil), nil); err != nil {
					t.Fatal(err)
				}
				h, p, err := c.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if h.Flags != 0x5 || h.Request != req || h.Size != 8 || len(p) != 8 {
					t.Fatalf("%v reply header %+v", req, h)
				}
			}
			negotiate(t, c)
			if err := c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqSetOwner, vhostuser.FlagVersion|vhostuser.FlagNeedReply, nil), nil); err != nil {
				t.Fatal(err)
			}
			if h, _, err := c.Recv(); err != nil || h.Flags != 0x5 {
				t.Fatalf("ack header %+v, %v", h, err)
			}
		}},
		{"get config exact size", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			for _, sz := range []uint32{1, 8, 60, 100, 256} {
				b, err := c.GetConfig(0, sz)
				if err != nil {
					t.Fatalf("size %d: %v", sz, err)
				}
				if len(b) != int(sz) {
					t.Fatalf("asked %d, got %d", sz, len(b))
				}
			}
			if b, err := c.GetConfig(8, 4); err != nil || len(b) != 4 {
				t.Fatalf("offset 8: %v %d", err, len(b))
			}
			// Past the 256-byte limit: an empty payload signals the error.
			if err := c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqGetConfig, vhostuser.FlagVersion, vhostuser.ConfigSpace{Offset: 250, Payload: make([]byte, 10)}.Encode()), nil); err != nil {
				t.Fatal(err)
			}
			if h, _, err := c.Recv(); err != nil || h.Size != 0 || h.Flags != 0x5 {
				t.Fatalf("out of range GET_CONFIG reply %+v, %v", h, err)
			}
		}},
		{"set config refused", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			_, err := c.Call(vhostuser.ReqSetConfig, vhostuser.ConfigSpace{Offset: 32, Payload: []byte{1}}.Encode(), nil)
			if !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("SET_CONFIG: %v, want nack", err)
			}
		}},
		{"unknown request with need_reply", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			fd := eventfd(t)
			_, err := c.Call(vhostuser.Request(200), []byte{1, 2, 3}, []int{fd})
			if !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("unknown request: %v, want nack", err)
			}
			_, err = c.Call(vhostuser.ReqSetLogFD, nil, []int{fd})
			if !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("SET_LOG_FD: %v, want nack", err)
			}
			if _, err := c.GetU64(vhostuser.ReqGetFeatures); err != nil {
				t.Fatalf("connection unusable after unknown request: %v", err)
			}
		}},
		{"bad size drops connection", func(t *testing.T, e *env, c *frontend.Conn) {
			c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqSetFeatures, vhostuser.FlagVersion, []byte{1, 2, 3, 4}), nil)
			expectDropped(t, c)
		}},
		{"oversized payload drops connection", func(t *testing.T, e *env, c *frontend.Conn) {
			c.SendRaw(vhostuser.Header{Request: vhostuser.ReqSetConfig, Flags: 1, Size: 1 << 30}.AppendTo(nil), nil)
			expectDropped(t, c)
		}},
		{"too many fds drops connection", func(t *testing.T, e *env, c *frontend.Conn) {
			m := newMem(t, 1<<20, 1)
			fds := make([]int, 9)
			for i := range fds {
				fds[i] = m.FD()
			}
			regs := make([]vhostuser.MemRegion, 8)
			c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqSetMemTable, vhostuser.FlagVersion, vhostuser.EncodeMemTable(regs)), fds)
			expectDropped(t, c)
		}},
		{"fd where none expected drops connection", func(t *testing.T, e *env, c *frontend.Conn) {
			c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqSetFeatures, vhostuser.FlagVersion, vhostuser.EncodeU64(0)), []int{eventfd(t)})
			expectDropped(t, c)
		}},
		{"garbage drops connection", func(t *testing.T, e *env, c *frontend.Conn) {
			c.SendRaw([]byte("GET / HTTP/1.1\r\nHost: nvblk\r\n\r\n"), nil)
			expectDropped(t, c)
		}},
		{"overlapping regions", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 2<<20, 2)
			r := m.VhostRegions()
			r[1].GuestAddr = r[0].GuestAddr + 4096
			_, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(r), []int{m.FD(), m.FD()})
			if !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("overlap: %v, want nack", err)
			}
			r = m.VhostRegions()
			r[1].UserAddr = r[0].UserAddr
			_, err = c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(r), []int{m.FD(), m.FD()})
			if !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("user overlap: %v, want nack", err)
			}
		}},
		{"region offset past fd size", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 1<<20, 1)
			r := m.VhostRegions()
			r[0].MmapOffset = 4096 // 4 KiB + 1 MiB > the 1 MiB memfd
			if _, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(r), []int{m.FD()}); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("offset past size: %v, want nack", err)
			}
			r = m.VhostRegions()
			r[0].Size = 0
			if _, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(r), []int{m.FD()}); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("empty region: %v, want nack", err)
			}
			r = m.VhostRegions()
			r[0].GuestAddr = ^uint64(0) - 10
			if _, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(r), []int{m.FD()}); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("wrapping region: %v, want nack", err)
			}
		}},
		{"mem table replaced and slots", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 2<<20, 2)
			for i := 0; i < 2; i++ {
				if _, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(m.VhostRegions()), []int{m.FD(), m.FD()}); err != nil {
					t.Fatal(err)
				}
			}
			r0 := vhostuser.EncodeSingleRegion(m.VhostRegion(0))
			if _, err := c.Call(vhostuser.ReqRemMemReg, r0, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Call(vhostuser.ReqRemMemReg, r0, nil); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("second REM_MEM_REG: %v, want nack", err)
			}
			if _, err := c.Call(vhostuser.ReqAddMemReg, r0, []int{m.FD()}); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Call(vhostuser.ReqAddMemReg, r0, []int{m.FD()}); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("duplicate ADD_MEM_REG: %v, want nack", err)
			}
			// REM_MEM_REG may carry an fd, which must be closed unused.
			if _, err := c.Call(vhostuser.ReqRemMemReg, r0, []int{m.FD()}); err != nil {
				t.Fatal(err)
			}
		}},
		{"vring addr outside memory", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 1<<20, 1)
			if _, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(m.VhostRegions()), []int{m.FD()}); err != nil {
				t.Fatal(err)
			}
			if err := c.SetVringState(vhostuser.ReqSetVringNum, 0, 256); err != nil {
				t.Fatal(err)
			}
			base, _ := m.UserAddr(0x10000)
			for _, a := range []vhostuser.VringAddr{
				{Desc: base - 4096, Avail: base + 8192, Used: base + 16384},
				{Desc: base, Avail: base + (1 << 20) - 8, Used: base + 16384}, // crosses the end
				{Desc: base, Avail: base + 8192, Used: 0x10},
				{Desc: base + 8, Avail: base + 8192, Used: base + 16384}, // misaligned
				{Index: 7, Desc: base, Avail: base + 8192, Used: base + 16384},
			} {
				if _, err := c.Call(vhostuser.ReqSetVringAddr, a.Encode(), nil); !errors.Is(err, frontend.ErrNack) {
					t.Fatalf("%+v: %v, want nack", a, err)
				}
			}
			ok := vhostuser.VringAddr{Desc: base, Avail: base + 8192, Used: base + 16384}
			if _, err := c.Call(vhostuser.ReqSetVringAddr, ok.Encode(), nil); err != nil {
				t.Fatal(err)
			}
		}},
		{"vring state validation", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			for _, tc := range []struct {
				req        vhostuser.Request
				index, num uint32
			}{
				{vhostuser.ReqSetVringNum, 0, 3}, {vhostuser.ReqSetVringNum, 0, 0}, {vhostuser.ReqSetVringNum, 0, 65536},
				{vhostuser.ReqSetVringNum, 2, 8}, {vhostuser.ReqSetVringBase, 0, 1 << 16},
				{vhostuser.ReqSetVringEnable, 0, 2}, {vhostuser.ReqSetVringEnable, 9, 1},
			} {
				if err := c.SetVringState(tc.req, tc.index, tc.num); !errors.Is(err, frontend.ErrNack) {
					t.Fatalf("%v %d %d: %v, want nack", tc.req, tc.index, tc.num, err)
				}
			}
			if err := c.SetVringFD(vhostuser.ReqSetVringCall, 5, eventfd(t)); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("SET_VRING_CALL bad index: %v", err)
			}
		}},
		{"vring base round trip", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			if err := c.SetVringState(vhostuser.ReqSetVringBase, 1, 1234); err != nil {
				t.Fatal(err)
			}
			if b, err := c.GetVringBase(1); err != nil || b != 1234 {
				t.Fatalf("GET_VRING_BASE = %d, %v", b, err)
			}
		}},
		{"vring fds and nofd", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			for _, req := range []vhostuser.Request{vhostuser.ReqSetVringCall, vhostuser.ReqSetVringErr, vhostuser.ReqSetVringKick} {
				if err := c.SetVringFD(req, 0, eventfd(t)); err != nil {
					t.Fatalf("%v: %v", req, err)
				}
				if err := c.SetVringFD(req, 0, eventfd(t)); err != nil { // replaces, closes the first
					t.Fatalf("%v again: %v", req, err)
				}
				if err := c.SetVringFD(req, 1, -1); err != nil {
					t.Fatalf("%v NOFD: %v", req, err)
				}
			}
		}},
		{"status and reset", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			if err := c.SetU64(vhostuser.ReqSetStatus, 0xf); err != nil {
				t.Fatal(err)
			}
			if s, err := c.GetU64(vhostuser.ReqGetStatus); err != nil || s != 0xf {
				t.Fatalf("GET_STATUS = %#x, %v", s, err)
			}
			if err := c.SetU64(vhostuser.ReqSetStatus, 0x100); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("status 0x100: %v", err)
			}
			if _, err := c.Call(vhostuser.ReqResetDevice, nil, nil); err != nil {
				t.Fatal(err)
			}
			if s, err := c.GetU64(vhostuser.ReqGetStatus); err != nil || s != 0 {
				t.Fatalf("GET_STATUS after reset = %#x, %v", s, err)
			}
			if _, err := c.Call(vhostuser.ReqResetOwner, nil, nil); err != nil {
				t.Fatal(err)
			}
		}},
		{"features not offered", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			if err := c.SetU64(vhostuser.ReqSetFeatures, 1<<63); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("SET_FEATURES: %v", err)
			}
			if err := c.SetU64(vhostuser.ReqSetProtocolFeatures, 1<<40|vhostuser.ProtoReplyAck); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("SET_PROTOCOL_FEATURES: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOpts{})
			c := e.dial(t)
			tc.run(t, e, c)
			c.Close()
			// Whatever happened, the server serves the next connection.
			c2 := e.dial(t)
			if _, err := c2.GetU64(vhostuser.ReqGetFeatures); err != nil {
				t.Fatalf("next connection: %v", err)
			}
		})
	}
}

func le64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s")
	l, err := vhostuser.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vhostuser.Listen(sock); err == nil {
		t.Fatal("second vhostuser.Listen on a live socket succeeded")
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	// Stale socket file: nothing listens, so it is replaced.
	l2, err := vhostuser.Listen(sock)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	l2.Close()
	link := filepath.Join(dir, "link")
	os.Symlink(filepath.Join(dir, "elsewhere"), link)
	if _, err := vhostuser.Listen(link); err == nil {
		t.Fatal("Listen on a symlink succeeded")
	}
	reg := filepath.Join(dir, "file")
	os.WriteFile(reg, nil, 0o600)
	if _, err := vhostuser.Listen(reg); err == nil {
		t.Fatal("Listen on a regular file succeeded")
	}
}

func TestFileListener(t *testing.T) {
	fdcheck.Check(t)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	// FileListener takes ownership of the fd it is given: hand it a
	// duplicate so f's own close (or finalizer) cannot close it twice.
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	fl, err := vhost.FileListener(fd)
	if err != nil {
		t.Fatal(err)
	}
	fl.Close()
}
