package btt

import (
	"fmt"
	"sync/atomic"
)

// memMedium is an in-memory Medium for tests. It counts persist barriers so
// tests can see the engine orders its steps.
type memMedium struct {
	buf      []byte
	persists atomic.Int64
	flushes  atomic.Int64
}

func newMemMedium(size int64) *memMedium { return &memMedium{buf: make([]byte, size)} }

func (m *memMedium) Size() int64 { return int64(len(m.buf)) }

func (m *memMedium) Slice(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > int64(len(m.buf))-n {
		return nil, fmt.Errorf("mem: [%d, +%d) out of range", off, n)
	}
	return m.buf[off : off+n : off+n], nil
}

func (m *memMedium) Persist(off, n int64) error {
	if _, err := m.Slice(off, n); err != nil {
		return err
	}
	m.persists.Add(1)
	return nil
}

func (m *memMedium) Flush() error { m.flushes.Add(1); return nil }

func (m *memMedium) Zero(off, n int64) error {
	b, err := m.Slice(off, n)
	if err != nil {
		return err
	}
	clear(b)
	return nil
}
