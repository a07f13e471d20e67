package acceptretry

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// TestPausesDoubleToASecondAndLogOncePerRun: a run of failures pauses
// longer each time up to a second, logs one line for the run rather than
// one per failure, and a success starts the next run afresh.
func TestPausesDoubleToASecondAndLogOncePerRun(t *testing.T) {
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	hook := logtest.NewLocal(lg)
	r := Retry{Prefix: "test"}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i, w := range want {
		if got := r.Failed(lg, errors.New("too many open files")); got != w*time.Millisecond {
			t.Fatalf("pause %d = %v, want %v", i, got, w*time.Millisecond)
		}
	}
	if n := len(hook.AllEntries()); n != 1 {
		t.Fatalf("%d log lines for one run of failures, want 1", n)
	}
	r.Succeeded(lg)
	if last := hook.LastEntry(); last == nil || last.Message != "test: accepting again" {
		t.Fatalf("last line %v, want the run's end", last)
	}
	if got := r.Failed(lg, errors.New("again")); got != 5*time.Millisecond {
		t.Fatalf("first pause after a success = %v, want 5ms", got)
	}
}
