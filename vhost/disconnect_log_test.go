package vhost_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhost/blk"
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
)

// servedWithInfoLogs serves a one-queue disk with its info-level log
// (where disconnects are) kept for the test.
func servedWithInfoLogs(t *testing.T) (sock string, logs *logtest.Hook) {
	t.Helper()
	lg := logrus.New()
	lg.SetLevel(logrus.InfoLevel)
	logs = logtest.NewLocal(lg)
	_, sock = vhosttest.Serve(t, newMemDisk(1<<20, 512), blk.Options{NumQueues: 1}, vhost.Options{Logger: lg})
	return sock, logs
}

// disconnectEntry waits for the log entry of the front-end's leaving.
func disconnectEntry(t *testing.T, logs *logtest.Hook) *logrus.Entry {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, e := range logs.AllEntries() {
			if strings.HasPrefix(e.Message, "vhost-user front-end disconnected") || strings.HasPrefix(e.Message, "vhost-user front-end left") {
				return e
			}
		}
	}
	t.Fatal("no disconnect in the log")
	return nil
}

// TestDisconnectAfterGetQueueNumSaysHowManyQueuesWereOffered: QEMU
// configured for more queues than the back-end offers leaves right after
// GET_QUEUE_NUM, saying why only on its own side; the back-end's log names
// that request and the queue count it answered.
func TestDisconnectAfterGetQueueNumSaysHowManyQueuesWereOffered(t *testing.T) {
	sock, logs := servedWithInfoLogs(t)
	c, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Timeout = ioTimeout
	// QEMU's order: vhost_dev_init, then vhost_user_backend_init.
	if _, err := c.Call(vhostuser.ReqSetOwner, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetU64(vhostuser.ReqGetFeatures); err != nil {
		t.Fatal(err)
	}
	p, err := c.GetU64(vhostuser.ReqGetProtocolFeatures)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetU64(vhostuser.ReqSetProtocolFeatures, p); err != nil {
		t.Fatal(err)
	}
	if n, err := c.GetU64(vhostuser.ReqGetQueueNum); err != nil || n != 1 {
		t.Fatalf("GET_QUEUE_NUM: %d, %v; want 1", n, err)
	}
	c.Close()

	e := disconnectEntry(t, logs)
	if want := "after GET_QUEUE_NUM (the back-end offers 1 queues"; !strings.Contains(e.Message, want) {
		t.Errorf("log %q lacks %q", e.Message, want)
	}
	if e.Data["last_request"] != vhostuser.ReqGetQueueNum || e.Data["queues"] != 1 {
		t.Errorf("log fields %v: want last_request GET_QUEUE_NUM, queues 1", e.Data)
	}
}

// TestDisconnectBeforeAnyRequestSaysSo: a front-end that connects and goes
// (a probe) is told apart from one that gave up mid-handshake.
func TestDisconnectBeforeAnyRequestSaysSo(t *testing.T) {
	sock, logs := servedWithInfoLogs(t)
	c, err := frontend.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if e := disconnectEntry(t, logs); e.Message != "vhost-user front-end disconnected before sending any request" {
		t.Errorf("log %q", e.Message)
	}
}

// TestDisconnectAfterServingIsPlain: once a queue has started the
// handshake is done, and leaving is the ordinary end of a session.
func TestDisconnectAfterServingIsPlain(t *testing.T) {
	sock, logs := servedWithInfoLogs(t)
	d, err := frontend.Connect(sock, frontend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	readWrite(t, d.Queues[0], 0)
	d.Close()
	if e := disconnectEntry(t, logs); e.Message != "vhost-user front-end disconnected" {
		t.Errorf("log %q", e.Message)
	}
}
