package frontend_test

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// stubBackend is just enough of a vhost-user-blk back-end to take a
// front-end through Start up to the memory table: it offers REPLY_ACK and
// INFLIGHT_SHMFD, hands out a real memfd as the inflight region, acks every
// other request and nacks refuse. It serves one connection and closes every
// fd it receives; the returned func reports whether it handed out the
// inflight fd, so a test knows there was one to leak.
func stubBackend(t *testing.T, refuse vhostuser.Request) (sock string, gaveInflightFD func() bool) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "stub.sock")
	l, err := vhostuser.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		gave bool
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		for {
			hdr, _, fds, err := vhostuser.ReadMessage(c)
			if err != nil {
				return
			}
			vhostuser.CloseFDs(fds)
			var reply []byte
			var replyFDs []int
			switch {
			case hdr.Request == vhostuser.ReqGetFeatures:
				reply = vhostuser.EncodeU64(virtio.FVersion1 | vhostuser.FeatureProtocolFeatures)
			case hdr.Request == vhostuser.ReqGetProtocolFeatures:
				reply = vhostuser.EncodeU64(vhostuser.ProtoReplyAck | vhostuser.ProtoInflightSHMFD)
			case hdr.Request == vhostuser.ReqGetInflightFD:
				fd, err := inflightMemfd(4096)
				if err != nil {
					t.Errorf("stub back-end: %v", err)
					return
				}
				defer unix.Close(fd)
				reply = vhostuser.Inflight{MmapSize: 4096, NumQueues: 1, QueueSize: 64}.Encode()
				replyFDs = []int{fd}
				mu.Lock()
				gave = true
				mu.Unlock()
			case hdr.Flags&vhostuser.FlagNeedReply != 0:
				var ack uint64
				if hdr.Request == refuse {
					ack = 1
				}
				reply = vhostuser.EncodeU64(ack)
			default:
				continue
			}
			msg := vhostuser.EncodeMessage(hdr.Request, vhostuser.ReplyFlags, reply)
			if err := vhostuser.WriteMessage(c, msg, replyFDs); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return sock, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return gave
	}
}

func inflightMemfd(size int64) (int, error) {
	fd, err := unix.MemfdCreate("stub-inflight", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, err
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// TestStartClosesTheInflightFDWhenGuestMemoryCannotBeMade: the back-end has
// handed over its inflight region when Start finds it cannot make guest
// memory of more regions than a memory table holds; the region's fd goes
// with the failed Start.
func TestStartClosesTheInflightFDWhenGuestMemoryCannotBeMade(t *testing.T) {
	fdcheck.Check(t)
	sock, gaveInflightFD := stubBackend(t, 0)
	_, err := frontend.Connect(sock, frontend.Options{Inflight: true, Regions: vhostuser.MaxMemRegions + 1})
	if err == nil {
		t.Fatal("Connect made guest memory of more regions than a memory table holds")
	}
	if !gaveInflightFD() {
		t.Fatalf("Start failed before GET_INFLIGHT_FD (%v): nothing to leak", err)
	}
}

// TestStartClosesTheInflightFDWhenTheMemoryTableIsRefused: the back-end
// hands over its inflight region, then nacks SET_MEM_TABLE; the region's
// fd, like the guest memory, goes with the failed Start.
func TestStartClosesTheInflightFDWhenTheMemoryTableIsRefused(t *testing.T) {
	fdcheck.Check(t)
	sock, gaveInflightFD := stubBackend(t, vhostuser.ReqSetMemTable)
	_, err := frontend.Connect(sock, frontend.Options{Inflight: true})
	if !errors.Is(err, frontend.ErrNack) {
		t.Fatalf("Connect = %v, want the SET_MEM_TABLE nack", err)
	}
	if !gaveInflightFD() {
		t.Fatal("the back-end never handed out an inflight fd: nothing to leak")
	}
}
