package vhost

import (
	"errors"
	"fmt"
	"runtime"
)

// Faults in shared memory. Guest memory, the inflight region and the dirty
// log are mappings of files the front-end holds: it can truncate them under us (a
// memfd the front-end made is not sealed), and a load or store past the
// file's new end raises SIGBUS. Go makes such a fault fatal unless the
// goroutine asked for a panic instead (runtime/debug.SetPanicOnFault): the
// queue workers and the session's request handling do, recover the panic
// and end only what the front-end broke, the queue or the connection.
//
// Only faults at an address inside those mappings are recovered. Anything
// else (a nil dereference, a fault in the medium that the disk did not turn
// into an error itself) is a bug below us, and unwinding through the disk's
// code could leave it locked or half-updated: the process still dies, and
// the medium, which survives crashes by design, stays consistent.

// errFault reports a fault in a mapping the front-end shares.
var errFault = errors.New("vhost: fault in shared memory")

// faultAddr returns the address of a memory fault that r, a recovered
// panic value, reports (SetPanicOnFault), or false if r is not one.
func faultAddr(r any) (uintptr, bool) {
	if _, ok := r.(runtime.Error); !ok {
		return 0, false
	}
	a, ok := r.(interface{ Addr() uintptr })
	if !ok {
		return 0, false // a nil dereference carries no address
	}
	return a.Addr(), true
}

// faultSite names the shared mapping of mem, inf or lg that holds addr, or
// "" if none does.
func faultSite(addr uintptr, mem *memTable, inf *inflightRegion, lg *dirtyLog) string {
	if mem != nil {
		for _, g := range mem.regions {
			if holds(g.mapping, addr) {
				return fmt.Sprintf("guest memory (region at guest address %#x, %#x bytes)", g.GuestAddr, g.Size)
			}
		}
	}
	if inf != nil && holds(inf.mapping, addr) {
		return "the inflight region"
	}
	if lg != nil && holds(lg.mapping, addr) {
		return "the dirty log"
	}
	return ""
}

// sharedFault turns r, a value recovered from a panic, into an error if it
// is a fault in mem, inf or lg; any other panic goes on.
func sharedFault(r any, mem *memTable, inf *inflightRegion, lg *dirtyLog) error {
	addr, ok := faultAddr(r)
	if !ok {
		panic(r)
	}
	site := faultSite(addr, mem, inf, lg)
	if site == "" {
		panic(r)
	}
	return fmt.Errorf("%w: address %#x in %s: the front-end shrank or unmapped the file behind it", errFault, addr, site)
}
