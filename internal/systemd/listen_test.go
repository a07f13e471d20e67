package systemd

import (
	"os"
	"strconv"
	"testing"
)

func TestListenFDsAreOursOnlyWhenLISTEN_PIDIsOurPid(t *testing.T) {
	for _, c := range []struct {
		name, pid, fds string
		want           []int
		fails          bool
	}{
		{"not activated", "", "", nil, false},
		{"for another process", "1", "2", nil, false},
		{"two sockets", strconv.Itoa(os.Getpid()), "2", []int{3, 4}, false},
		{"bad count", strconv.Itoa(os.Getpid()), "many", nil, true},
		{"bad pid", "me", "1", nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("LISTEN_PID", c.pid)
			t.Setenv("LISTEN_FDS", c.fds)
			if c.pid == "" {
				os.Unsetenv("LISTEN_PID")
			}
			got, err := ListenFDs()
			if (err != nil) != c.fails || len(got) != len(c.want) {
				t.Fatalf("ListenFDs() = %v, %v", got, err)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("ListenFDs() = %v, want %v", got, c.want)
				}
			}
			if c.pid != "" {
				if _, set := os.LookupEnv("LISTEN_PID"); set {
					t.Error("LISTEN_PID left in the environment")
				}
			}
		})
	}
}
