package conformance

import (
	"github.com/nvblk/nvblk/vhostuser"
	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// memoryCases give the back-end guest memory in several regions, with one
// memory table or region by region.
var memoryCases = []Case{
	{"memory/multiple-regions", `vhost-user "Memory regions description"`},
	{"memory/add-mem-reg", frontEndMessage + ": VHOST_USER_ADD_MEM_REG"},
}

func checkMemory(s *suite) {
	readOne := func(d *dev) finding {
		if _, err := d.read(0, 4096); err != nil {
			return errFinding("read", err)
		}
		if err := d.Queues[0].Do(&frontend.Request{Type: virtio.BlkTIn, Data: make([]byte, 4096)}, s.timeout()); err != nil {
			return errFinding("read", err)
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
