package nbd

import (
	"fmt"
	"math/bits"
)

// Export is a block device the Server serves: NumSectors sectors of
// SectorSize bytes. A *btt.Device is one as it is; anything else with
// sector-granular I/O takes a few lines.
//
// It must be safe for concurrent use: the server runs up to
// ServerOptions.MaxInFlight requests of each connection at once, and
// several connections may share it. Flush must make every write completed
// so far durable, whichever connection made it: the server advertises
// NBD_FLAG_CAN_MULTI_CONN on that promise, and implements FUA as a write
// followed by Flush.
type Export interface {
	// SectorSize is a power of two from 512 to 65536: the export's
	// minimum and preferred block size.
	SectorSize() uint32
	// NumSectors is the capacity. The server reads it once per
	// connection, when the client picks the export.
	NumSectors() uint64
	// ReadV reads whole sectors starting at lba into iov.
	ReadV(lba uint64, iov [][]byte) error
	// WriteV writes whole sectors starting at lba from iov.
	WriteV(lba uint64, iov [][]byte) error
	// WriteZeroes makes n sectors at lba read as zeroes; it serves both
	// NBD_CMD_WRITE_ZEROES and NBD_CMD_TRIM.
	WriteZeroes(lba, n uint64) error
	// Flush makes every completed write durable.
	Flush() error
}

// readOnlyReporter is an Export that may refuse writes on its own (a BTT
// opened read-only, or one whose arena carries the error flag): it is then
// served read-only whatever ExportOptions say.
type readOnlyReporter interface {
	ReadOnly() bool
}

// ExportOptions control how AddExport serves an Export.
type ExportOptions struct {
	// ReadOnly serves the export with NBD_FLAG_READ_ONLY: writes, trims and
	// write-zeroes get EPERM.
	ReadOnly bool
}

// served is an export as the server holds it.
type served struct {
	name     string
	dev      Export
	sector   uint32
	readOnly bool
}

func newServed(name string, e Export, opts ExportOptions) (*served, error) {
	if len(name) > maxStringLength {
		return nil, fmt.Errorf("nbd: export name of %d bytes, more than %d", len(name), maxStringLength)
	}
	ss := e.SectorSize()
	if ss < 512 || ss > maxMinBlockSize || bits.OnesCount32(ss) != 1 {
		return nil, fmt.Errorf("nbd: export %q: sector size %d is not a power of two from 512 to %d", name, ss, maxMinBlockSize)
	}
	ro := opts.ReadOnly
	if r, ok := e.(readOnlyReporter); ok && r.ReadOnly() {
		ro = true
	}
	return &served{name: name, dev: e, sector: ss, readOnly: ro}, nil
}

// size is the export's size in bytes now, or an error when it does not fit
// the protocol's 64 bits.
func (s *served) size() (uint64, error) {
	n := s.dev.NumSectors()
	hi, lo := bits.Mul64(n, uint64(s.sector))
	if hi != 0 {
		return 0, fmt.Errorf("nbd: export %q: %d sectors of %d bytes overflow 64 bits", s.name, n, s.sector)
	}
	return lo, nil
}

// transmissionFlags are those the server sends for the export: flush and
// FUA always (the Export's Flush), trim and write-zeroes when writable,
// and multi-conn since every connection shares the Export and its Flush.
func (s *served) transmissionFlags() uint16 {
	f := tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagCanMultiConn
	if s.readOnly {
		return f | tflagReadOnly
	}
	return f | tflagSendTrim | tflagSendWriteZeroes
}
