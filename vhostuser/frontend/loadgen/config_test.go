package loadgen

import (
	"strings"
	"testing"
	"time"
)

func TestParseMode(t *testing.T) {
	for _, s := range []string{"randread", "randwrite", "randrw", "read", "write"} {
		m, err := ParseMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
	}
	for _, s := range []string{"", "rw", "RANDREAD", "randread "} {
		if _, err := ParseMode(s); err == nil {
			t.Errorf("ParseMode(%q) accepted", s)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Mode: RandRead, BlockSize: 4096, IODepth: 32, Queues: 2, Duration: time.Second}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		err  string // "" = valid
	}{
		{"ok", func(*Config) {}, ""},
		{"defaults", func(c *Config) { c.Queues, c.IODepth = 0, 0 }, ""},
		{"bs not sectors", func(c *Config) { c.BlockSize = 1000 }, "multiple of 512"},
		{"bs zero", func(c *Config) { c.BlockSize = 0 }, "multiple of 512"},
		{"bs huge", func(c *Config) { c.BlockSize = 8 << 20 }, "over 4 MiB"},
		{"depth", func(c *Config) { c.IODepth = MaxIODepth + 1 }, "iodepth"},
		{"queues", func(c *Config) { c.Queues = -1 }, "queues"},
		{"no end", func(c *Config) { c.Duration = 0 }, "neither"},
		{"count and ramp", func(c *Config) { c.Requests, c.Ramp = 10, time.Second }, "do not combine"},
		{"negative", func(c *Config) { c.Spin = -1 }, "negative"},
		{"mode", func(c *Config) { c.Mode = 9 }, "mode"},
		{"too small", func(c *Config) { c.SizeLimit = 32 * 4096 }, "fewer than 32 blocks"},
	} {
		c := ok
		tc.edit(&c)
		err := c.validate(1 << 30)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one with %q", tc.name, err, tc.err)
		}
	}
	c := ok
	if err := c.validate(1 << 30); err != nil || c.SizeLimit != 1<<30 {
		t.Fatalf("size limit defaults to %d, want the capacity", c.SizeLimit)
	}
	c.SizeLimit = 1 << 40
	if err := c.validate(1 << 30); err != nil || c.SizeLimit != 1<<30 {
		t.Fatalf("size limit past the disk kept as %d", c.SizeLimit)
	}
}

func TestFrontendOptionsFitDepth(t *testing.T) {
	for _, qd := range []int{1, 2, 32, 100, MaxIODepth} {
		o := FrontendOptions(Config{IODepth: qd, BlockSize: 131072, Queues: 2})
		if int(o.QueueSize) < descsPerReq*qd || o.QueueSize&(o.QueueSize-1) != 0 || o.QueueSize > 1024 {
			t.Errorf("iodepth %d: queue size %d", qd, o.QueueSize)
		}
		if o.MemSize < uint64(2*qd*131072) || !o.EventIdx || o.NumQueues != 2 {
			t.Errorf("iodepth %d: %+v", qd, o)
		}
	}
}

func TestParseStat(t *testing.T) {
	line := "4242 (qemu (storage) d) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 5 0 123 456 789\n"
	d, err := parseStat([]byte(line))
	if err != nil || d != 3250*time.Millisecond {
		t.Fatalf("parseStat = %v, %v; want 3.25s", d, err)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 x 2"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}
