package vhost_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
)

// TestBrokenMessages adds to TestProtocol the broken front-ends it does not
// cover: messages cut short, size fields that promise more than is sent,
// descriptors in odd places, unmappable regions, requests before SET_OWNER.
// Each ends with a clear outcome (a nack or a dropped connection), no panic,
// no fd leak (startEnv counts) and the next connection served.
func TestBrokenMessages(t *testing.T) {
	getFeatures := vhostuser.EncodeMessage(vhostuser.ReqGetFeatures, vhostuser.FlagVersion, nil)
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, e *env, c *frontend.Conn)
	}{
		{"header cut mid-way", func(t *testing.T, e *env, c *frontend.Conn) {
			c.SendRaw(getFeatures[:7], nil)
			c.UnixConn().CloseWrite()
			expectDropped(t, c)
		}},
		{"header stalled mid-way", func(t *testing.T, e *env, c *frontend.Conn) {
			// The front-end keeps the connection open but never finishes
			// the message: it is dropped after MessageTimeout, not waited
			// for forever.
			c.SendRaw(getFeatures[:7], nil)
			expectDroppedWithin(t, c, 5*time.Second)
		}},
		{"payload stalled mid-way", func(t *testing.T, e *env, c *frontend.Conn) {
			msg := vhostuser.EncodeMessage(vhostuser.ReqSetFeatures, vhostuser.FlagVersion, vhostuser.EncodeU64(0))
			c.SendRaw(msg[:vhostuser.HeaderSize+3], nil)
			expectDroppedWithin(t, c, 5*time.Second)
		}},
		{"idle between messages is not a stall", func(t *testing.T, e *env, c *frontend.Conn) {
			if _, err := c.GetU64(vhostuser.ReqGetFeatures); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			if _, err := c.GetU64(vhostuser.ReqGetFeatures); err != nil {
				t.Fatalf("after an idle pause longer than MessageTimeout: %v", err)
			}
		}},
		{"header cut mid-way carrying fds", func(t *testing.T, e *env, c *frontend.Conn) {
			c.SendRaw(getFeatures[:5], []int{eventfd(t), eventfd(t)})
			c.UnixConn().CloseWrite()
			expectDropped(t, c)
		}},
		{"payload cut", func(t *testing.T, e *env, c *frontend.Conn) {
			msg := vhostuser.EncodeMessage(vhostuser.ReqSetFeatures, vhostuser.FlagVersion, vhostuser.EncodeU64(0))
			c.SendRaw(msg[:vhostuser.HeaderSize+3], nil)
			c.UnixConn().CloseWrite()
			expectDropped(t, c)
		}},
		{"mem table payload cut with its fds", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 1<<20, 1)
			msg := vhostuser.EncodeMessage(vhostuser.ReqSetMemTable, vhostuser.FlagVersion, vhostuser.EncodeMemTable(m.VhostRegions()))
			c.SendRaw(msg[:len(msg)-10], []int{m.FD()})
			c.UnixConn().CloseWrite()
			expectDropped(t, c)
		}},
		{"header size larger than the payload", func(t *testing.T, e *env, c *frontend.Conn) {
			// 16 announced, 8 sent: the next message's header is read as
			// payload, and the stream is out of step: the peer must go.
			c.SendRaw(vhostuser.Header{Request: vhostuser.ReqSetFeatures, Flags: vhostuser.FlagVersion, Size: 16}.AppendTo(nil), nil)
			c.SendRaw(append(vhostuser.EncodeU64(0), getFeatures...), nil)
			expectDropped(t, c)
		}},
		{"region count larger than the payload", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 2<<20, 2)
			p := vhostuser.EncodeMemTable(m.VhostRegions()[:1])
			p[0] = 2 // two regions announced, one sent
			c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqSetMemTable, vhostuser.FlagVersion, p), []int{m.FD(), m.FD()})
			expectDropped(t, c)
		}},
		{"config size larger than the payload", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			p := vhostuser.ConfigSpace{Payload: make([]byte, 8)}.Encode()
			p[4] = 200 // size field
			c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqGetConfig, vhostuser.FlagVersion, p), nil)
			expectDropped(t, c)
		}},
		{"fds split over header and payload, too many in all", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 1<<20, 1)
			msg := vhostuser.EncodeMessage(vhostuser.ReqSetMemTable, vhostuser.FlagVersion, vhostuser.EncodeMemTable(m.VhostRegions()))
			five := []int{m.FD(), m.FD(), m.FD(), m.FD(), m.FD()}
			c.SendRaw(msg[:vhostuser.HeaderSize], five)
			c.SendRaw(msg[vhostuser.HeaderSize:], five)
			expectDropped(t, c)
		}},
		{"more fds than the control buffer holds", func(t *testing.T, e *env, c *frontend.Conn) {
			fd := eventfd(t)
			fds := make([]int, 64)
			for i := range fds {
				fds[i] = fd
			}
			c.SendRaw(getFeatures, fds)
			expectDropped(t, c)
		}},
		{"fds on a request that takes none", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqGetQueueNum, vhostuser.FlagVersion, nil), []int{eventfd(t)})
			expectDropped(t, c)
		}},
		{"message split over writes is whole", func(t *testing.T, e *env, c *frontend.Conn) {
			for _, b := range [][]byte{getFeatures[:3], getFeatures[3:9], getFeatures[9:]} {
				if err := c.SendRaw(b, nil); err != nil {
					t.Fatal(err)
				}
			}
			if h, p, err := c.Recv(); err != nil || h.Request != vhostuser.ReqGetFeatures || len(p) != 8 {
				t.Fatalf("reply %+v %d bytes, %v", h, len(p), err)
			}
		}},
		{"region fd that cannot be mapped", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(p[0])
			defer unix.Close(p[1])
			r := vhostuser.MemRegion{GuestAddr: 0, Size: 1 << 20, UserAddr: 1 << 30}
			if _, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable([]vhostuser.MemRegion{r}), []int{p[0]}); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("pipe as guest memory: %v, want nack", err)
			}
			if _, err := c.Call(vhostuser.ReqAddMemReg, vhostuser.EncodeSingleRegion(r), []int{eventfd(t)}); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("eventfd as guest memory: %v, want nack", err)
			}
		}},
		{"region larger than its file", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 1<<20, 1)
			r := m.VhostRegion(0)
			for _, size := range []uint64{1<<20 + 1, 1 << 62, ^uint64(0)} {
				r.Size = size
				if _, err := c.Call(vhostuser.ReqAddMemReg, vhostuser.EncodeSingleRegion(r), []int{m.FD()}); !errors.Is(err, frontend.ErrNack) {
					t.Fatalf("size %#x: %v, want nack", size, err)
				}
			}
			r = m.VhostRegion(0)
			r.MmapOffset = ^uint64(0) - 4095 // wraps with the size
			if _, err := c.Call(vhostuser.ReqAddMemReg, vhostuser.EncodeSingleRegion(r), []int{m.FD()}); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("wrapping offset: %v, want nack", err)
			}
		}},
		{"region overlapping one added earlier", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			m := newMem(t, 2<<20, 2)
			if _, err := c.Call(vhostuser.ReqAddMemReg, vhostuser.EncodeSingleRegion(m.VhostRegion(0)), []int{m.FD()}); err != nil {
				t.Fatal(err)
			}
			r := m.VhostRegion(1)
			r.GuestAddr = m.VhostRegion(0).GuestAddr + 4096
			if _, err := c.Call(vhostuser.ReqAddMemReg, vhostuser.EncodeSingleRegion(r), []int{m.FD()}); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("overlapping ADD_MEM_REG: %v, want nack", err)
			}
		}},
		{"ring set up before memory lies outside it", func(t *testing.T, e *env, c *frontend.Conn) {
			negotiate(t, c)
			if err := c.SetVringState(vhostuser.ReqSetVringNum, 0, 64); err != nil {
				t.Fatal(err)
			}
			// Accepted for now (no memory to check against)...
			a := vhostuser.VringAddr{Desc: 1 << 40, Avail: 1<<40 + 4096, Used: 1<<40 + 8192}
			if _, err := c.Call(vhostuser.ReqSetVringAddr, a.Encode(), nil); err != nil {
				t.Fatal(err)
			}
			m := newMem(t, 1<<20, 1)
			if _, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(m.VhostRegions()), []int{m.FD()}); err != nil {
				t.Fatal(err)
			}
			// ...but the queue never starts on it: the kick is taken (the
			// ring is still disabled), enabling it is refused.
			if err := c.SetVringFD(vhostuser.ReqSetVringKick, 0, eventfd(t)); err != nil {
				t.Fatal(err)
			}
			if err := c.SetVringState(vhostuser.ReqSetVringEnable, 0, 1); !errors.Is(err, frontend.ErrNack) {
				t.Fatalf("enable of a ring outside memory: %v, want nack", err)
			}
		}},
		{"requests before SET_OWNER are served", func(t *testing.T, e *env, c *frontend.Conn) {
			// SET_OWNER carries nothing: this backend serves one front-end
			// per connection, so, like libvhost-user, it does not insist
			// on it. A front-end that skips it gets a working device.
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
			c.SetProtocolFeatures(p) // REPLY_ACK: every request below is acked
			if err := c.SetU64(vhostuser.ReqSetFeatures, f); err != nil {
				t.Fatal(err)
			}
			m := newMem(t, 1<<20, 1)
			if _, err := c.Call(vhostuser.ReqSetMemTable, vhostuser.EncodeMemTable(m.VhostRegions()), []int{m.FD()}); err != nil {
				t.Fatal(err)
			}
			if n, err := c.GetU64(vhostuser.ReqGetQueueNum); err != nil || n != 2 {
				t.Fatalf("GET_QUEUE_NUM = %d, %v", n, err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Stalls are cut after 200 ms here (30 s in production).
			e := startEnv(t, envOpts{messageTimeout: 200 * time.Millisecond})
			c := e.dial(t)
			tc.run(t, e, c)
			c.Close()
			c2 := e.dial(t)
			if _, err := c2.GetU64(vhostuser.ReqGetFeatures); err != nil {
				t.Fatalf("next connection: %v", err)
			}
		})
	}
}

// expectDroppedWithin waits for the server to close the connection, and
// fails if it has not within limit.
func expectDroppedWithin(t *testing.T, c *frontend.Conn, limit time.Duration) {
	t.Helper()
	c.UnixConn().SetReadDeadline(time.Now().Add(limit))
	if _, _, err := c.Recv(); err == nil {
		t.Fatal("connection still open; want it dropped")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("server still holds a stalled message after %v", limit)
	}
}

// The line an operator sees when a front-end is dropped for what it sent
// says so in words: a malformed message, and a message that could not be
// read.
func TestDroppedConnectionsAreLoggedAsBadMessages(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(c *frontend.Conn)
		want string
	}{
		{"malformed", func(c *frontend.Conn) {
			// SET_FEATURES with a 4-byte payload: decodes as malformed.
			c.SendRaw(vhostuser.EncodeMessage(vhostuser.ReqSetFeatures, vhostuser.FlagVersion, make([]byte, 4)), nil)
		}, "vhost: dropping connection: malformed message"},
		{"unreadable", func(c *frontend.Conn) {
			hdr := vhostuser.Header{Request: vhostuser.ReqGetFeatures, Flags: vhostuser.FlagVersion, Size: vhostuser.MaxPayloadSize + 1}
			c.SendRaw(hdr.AppendTo(nil), nil)
		}, "vhost: dropping connection: bad message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, envOpts{})
			c := e.dial(t)
			tc.send(c)
			expectDropped(t, c)
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				for _, l := range e.logs.AllEntries() {
					if l.Message == tc.want {
						return
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no log line %q", tc.want)
				}
			}
		})
	}
}
