package main

import (
	"encoding/json"
	"testing"
)

// TestInfoAndCheckJSONUseNdctlNames: the fields `ndctl list` prints for a
// sector-mode namespace carry the same names and meanings here, next to
// the BTT's own (version, num_sectors, ... which scripts already read).
func TestInfoAndCheckJSONUseNdctlNames(t *testing.T) {
	img := formatted(t, "--uuid", "01234567-89ab-cdef-0123-456789abcdef", "--sector-size", "512")
	code, out, stderr := nvblk(t, nil, "info", img, "--json")
	var info map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("info: exit %d: %s%s", code, stderr, out)
	}
	ns := info["num_sectors"].(float64)
	for k, want := range map[string]any{
		"dev": img, "mode": "sector", "uuid": "01234567-89ab-cdef-0123-456789abcdef", "sector_size": 512.0,
		"size": ns * 512, "version": "1.1", "path": img,
	} {
		if info[k] != want {
			t.Errorf("info %q = %v, want %v", k, info[k], want)
		}
	}
	code, out, stderr = nvblk(t, nil, "check", img, "--json")
	var check map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &check) != nil {
		t.Fatalf("check: exit %d: %s%s", code, stderr, out)
	}
	for k, want := range map[string]any{
		"dev": img, "mode": "sector", "uuid": "01234567-89ab-cdef-0123-456789abcdef", "sector_size": 512.0, "consistent": true,
	} {
		if check[k] != want {
			t.Errorf("check %q = %v, want %v", k, check[k], want)
		}
	}
}
