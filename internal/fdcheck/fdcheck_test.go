package fdcheck_test

import (
	"os"
	"testing"

	"github.com/nvblk/nvblk/internal/fdcheck"
)

// TestCheckSeesALeak: a descriptor left open fails the test that opened
// it, and closing it makes the count return.
func TestCheckSeesALeak(t *testing.T) {
	before := fdcheck.Open(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	if got := fdcheck.Open(t); got != before+1 {
		t.Fatalf("open fds %d after opening one, want %d", got, before+1)
	}
	f.Close()
	if got := fdcheck.Open(t); got != before {
		t.Fatalf("open fds %d after closing, want %d", got, before)
	}
}
