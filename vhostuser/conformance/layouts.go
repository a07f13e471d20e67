package conformance

import (
	"bytes"

	"github.com/nvblk/nvblk/vhostuser/frontend"
	"github.com/nvblk/nvblk/virtio"
)

// layout is a way of cutting a request into descriptors that a guest may
// use: the device must not assume any particular one.
type layout struct {
	Case
	need     uint64
	indirect bool
	// Cuts for a read (header only out) and for a write (header+data
	// out, status only in).
	readOut, readIn, writeOut []int
}

// layoutBytes is the data each layout reads (and writes).
const layoutBytes = 8 << 10

const (
	messageFraming      = `virtio 1.2 §2.7.4 "Message Framing"`
	indirectDescriptors = `virtio 1.2 §2.7.5.3 "Indirect Descriptors"`
)

var layouts = []layout{
	{Case: Case{"layout/header-split-across-descriptors", messageFraming},
		readOut: []int{4, 8, 12}, writeOut: []int{4, 8, 12, 16}},
	{Case: Case{"layout/header-and-data-in-one-descriptor", messageFraming},
		readOut: []int{}, writeOut: []int{}},
	{Case: Case{"layout/data-and-status-in-one-descriptor", messageFraming},
		readIn: []int{}},
	{Case: Case{"layout/byte-granular-segments", messageFraming},
		readIn: every(1000, 1000, layoutBytes+1), writeOut: every(16, 1000, 16+layoutBytes)},
	{Case: Case{"layout/indirect", indirectDescriptors},
		need: virtio.FRingIndirectDesc, indirect: true},
	{Case: Case{"layout/indirect-header-split-byte-segments", indirectDescriptors + `, §2.7.4 "Message Framing"`},
		need: virtio.FRingIndirectDesc, indirect: true,
		readOut: []int{8}, readIn: every(700, 700, layoutBytes+1), writeOut: append([]int{8}, every(16, 700, 16+layoutBytes)...)},
}

var layoutCases = casesOf(layouts, func(l layout) Case { return l.Case })

// every returns cut offsets every step bytes from start up to end.
func every(start, step, end int) []int {
	var out []int
	for o := start; o < end; o += step {
		out = append(out, o)
	}
	return out
}

func checkLayouts(s *suite) {
	const n = layoutBytes
	s.group(frontend.Options{Indirect: true}, caseNames(layoutCases), func(d *dev) {
		indirect := d.Features&virtio.FRingIndirectDesc != 0
		for i, l := range layouts {
			if l.need != 0 && !indirect {
				s.record(l.Name, s.notOffered(featureName(l.need)))
				continue
			}
			s.record(l.Name, func() finding {
				sector := uint64(0)
				if s.scratchOK {
					sector = s.scratch
					w, err := d.do(rawReq{out: append(header(virtio.BlkTOut, sector), pattern(int64(200+i), n)...),
						inLen: 1, outCuts: l.writeOut, indirect: l.indirect})
					if f := wantStatus(w, err, virtio.BlkSOK); f.verdict != Pass {
						return failf("write: %s", f.detail)
					}
				}
				want, err := d.read(sector, n)
				if err != nil {
					return errFinding("read with the usual layout", err)
				}
				if s.scratchOK && !bytes.Equal(want, pattern(int64(200+i), n)) {
					return failf("the write in this layout did not land")
				}
				r, err := d.do(rawReq{out: header(virtio.BlkTIn, sector), inLen: n + 1,
					outCuts: l.readOut, inCuts: l.readIn, indirect: l.indirect})
				switch f := wantStatus(r, err, virtio.BlkSOK); {
				case f.verdict != Pass:
					return failf("read: %s", f.detail)
				case !bytes.Equal(r.in[:n], want):
					return failf("read in this layout differs from the usual layout's")
				case r.used != n+1:
					return failf("read used len %d, want %d", r.used, n+1)
				}
				if s.scratchOK {
					return passf("write and read")
				}
				return passf("read only (no writes: %s)", s.scratchWhy)
			}())
		}
	})
}
