package main

import (
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nvblk/nvblk/internal/blkserve"
	"github.com/nvblk/nvblk/internal/vhosttest"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/vhost"
	"github.com/nvblk/nvblk/vhostuser/frontend/loadgen"
)

func TestBenchUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--socket-path is required"},
		{[]string{"--socket-path", "s", "--rw", "randomread"}, "--rw"},
		{[]string{"--socket-path", "s", "--bs", "1000"}, "--bs"},
		{[]string{"--socket-path", "s", "--bs", "0"}, "bs"},
		{[]string{"--socket-path", "s", "--iodepth", "0"}, "--iodepth"},
		{[]string{"--socket-path", "s", "--iodepth", "257"}, "--iodepth"},
		{[]string{"--socket-path", "s", "--queues", "0"}, "--queues"},
		{[]string{"--socket-path", "s", "--time", "0s"}, "--time"},
		{[]string{"--socket-path", "s", "--pid", "-3"}, "--pid"},
		{[]string{"--socket-path", "s", "extra"}, "unexpected"},
	} {
		code, _, stderr := nvblk(t, nil, append([]string{"bench"}, tc.args...)...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("bench %q: exit %d, stderr %q; want exit 2 mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
}

func TestBenchConfigFromFlags(t *testing.T) {
	fs, a := benchFlags()
	if _, err := parseInterspersed(fs, []string{"--socket-path", "s", "--rw", "randrw", "--bs", "128k",
		"--iodepth", "8", "--queues", "2", "--time", "3s", "--size-limit", "1G", "--spin-us", "20", "--fill"}); err != nil {
		t.Fatal(err)
	}
	c, err := benchConfig(a)
	if err != nil {
		t.Fatal(err)
	}
	want := loadgen.Config{Mode: loadgen.RandRW, BlockSize: 128 << 10, IODepth: 8, Queues: 2,
		Duration: 3 * time.Second, SizeLimit: 1 << 30, Fill: true, Spin: 20 * time.Microsecond}
	c.Progress = nil
	if c.Mode != want.Mode || c.BlockSize != want.BlockSize || c.IODepth != want.IODepth || c.Queues != want.Queues ||
		c.Duration != want.Duration || c.SizeLimit != want.SizeLimit || c.Fill != want.Fill || c.Spin != want.Spin {
		t.Fatalf("config %+v, want %+v", c, want)
	}
}

func TestBenchAgainstServer(t *testing.T) {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	s := vhosttest.ServeBTT(t, vhosttest.Options{
		BTTOptions: vhosttest.BTTOptions{Size: 32 << 20, LBASize: 4096, Durability: pmem.DurabilityFlush},
		Config:     blkserve.Config{Server: vhost.Options{Logger: lg}},
	})

	code, out, stderr := nvblk(t, nil, "bench", "--socket-path", s.Sock, "--rw", "randwrite", "--iodepth", "4", "--time", "300ms", "--json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var j benchJSON
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if j.RW != "randwrite" || j.Requests == 0 || j.IOPS <= 0 || j.LatP50us <= 0 || j.LatP50us > j.LatP999us || j.BackendPID != 0 {
		t.Fatalf("result %+v", j)
	}
	code, out, stderr = nvblk(t, nil, "bench", "--socket-path", s.Sock, "--rw", "read", "--bs", "64k", "--time", "200ms")
	if code != exitOK || !strings.Contains(out, "IOPS") || !strings.Contains(out, "p99.9") {
		t.Fatalf("exit %d: %s%s", code, out, stderr)
	}
}

func TestBenchPackedFlagAsksForPackedRings(t *testing.T) {
	fs, a := benchFlags()
	if _, err := parseInterspersed(fs, []string{"--socket-path", "s", "--packed"}); err != nil {
		t.Fatal(err)
	}
	if c, err := benchConfig(a); err != nil || !c.Packed {
		t.Fatalf("config %+v, %v: want Packed", c, err)
	}
}

func TestBenchAgainstServerOnPackedRings(t *testing.T) {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	s := vhosttest.ServeBTT(t, vhosttest.Options{
		BTTOptions: vhosttest.BTTOptions{Size: 32 << 20, LBASize: 4096, Durability: pmem.DurabilityFlush},
		Config:     blkserve.Config{Server: vhost.Options{Logger: lg}},
	})
	for _, rw := range []string{"randwrite", "randread"} {
		code, out, stderr := nvblk(t, nil, "bench", "--socket-path", s.Sock, "--rw", rw, "--iodepth", "8", "--time", "300ms", "--packed", "--json")
		if code != exitOK {
			t.Fatalf("%s: exit %d: %s", rw, code, stderr)
		}
		var j benchJSON
		if err := json.Unmarshal([]byte(out), &j); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if j.Ring != "packed" || j.RW != rw || j.Requests == 0 || j.IOPS <= 0 {
			t.Fatalf("result %+v", j)
		}
	}
}

// TestBenchWithADirtyLogRunsWhereLoggingIsOfferedAndSaysWhyNotElsewhere:
// bench --dirty-log measures a serve --migration with its log on, and a
// serve without --migration is named as the reason it cannot.
func TestBenchWithADirtyLogRunsWhereLoggingIsOfferedAndSaysWhyNotElsewhere(t *testing.T) {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	for _, migration := range []bool{true, false} {
		s := vhosttest.ServeBTT(t, vhosttest.Options{
			BTTOptions: vhosttest.BTTOptions{Size: 32 << 20, LBASize: 4096, Durability: pmem.DurabilityFlush},
			Config:     blkserve.Config{Server: vhost.Options{Logger: lg, Migration: migration}},
		})
		code, out, stderr := nvblk(t, nil, "bench", "--socket-path", s.Sock, "--rw", "randread", "--iodepth", "8", "--time", "300ms", "--dirty-log", "--json")
		if !migration {
			if code == exitOK || !strings.Contains(stderr, "--migration") {
				t.Fatalf("without --migration: exit %d, %q; want a failure naming serve --migration", code, stderr)
			}
			continue
		}
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var j benchJSON
		if err := json.Unmarshal([]byte(out), &j); err != nil || j.Requests == 0 {
			t.Fatalf("result %+v, %v: %s", j, err, out)
		}
	}
}
