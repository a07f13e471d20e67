package conformance

import (
	"bytes"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// sessionCases connect again after a session ends, cleanly or with the
// front-end gone mid-flight: the disk and the back-end must be as they
// were.
var sessionCases = []Case{
	{"session/reconnect", `vhost-user "Communication": reconnection`},
	{"session/reconnect-after-drop", `vhost-user "Communication": reconnection after the front-end closes the connection`},
}

func checkSession(s *suite) {
	sector, n := uint64(0), 16<<10
	var want []byte
	f := s.withDev(frontend.Options{}, func(d *dev) finding {
		if s.scratchOK {
			sector, want = s.scratch, pattern(300, n)
			if err := d.write(sector, want); err != nil {
				return errFinding("write before disconnecting", err)
			}
			return pass()
		}
		var err error
		if want, err = d.read(sector, n); err != nil {
			return errFinding("read before disconnecting", err)
		}
		return pass()
	})
	if f.verdict != Pass {
		s.record("session/reconnect", f)
	} else {
		s.record("session/reconnect", s.withDev(frontend.Options{}, func(d *dev) finding {
			got, err := d.read(sector, n)
			if err != nil {
				return errFinding("read after reconnecting", err)
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
		s.record("session/reconnect-after-drop", errFinding("connect", err))
		return
	}
	q := d.Queues[0]
	for i := 0; i < 8; i++ {
		q.Submit(&frontend.Request{Type: virtio.BlkTIn, Sector: uint64(i) * 8, Data: make([]byte, 4096)})
	}
	q.Kick()
	d.Conn.Close()
	d.Close()
	s.record("session/reconnect-after-drop", s.withDev(frontend.Options{}, func(d *dev) finding {
		if _, err := d.read(0, 4096); err != nil {
			return errFinding("read after reconnecting", err)
		}
		return pass()
	}))
}
