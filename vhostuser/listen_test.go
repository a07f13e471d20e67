package vhostuser_test

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/fdcheck"
	"github.com/nvblk/nvblk/vhostuser"
)

// TestListenMode: the socket is the owner's alone unless widened, and gets
// exactly the mode asked whatever the umask.
func TestListenMode(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  fs.FileMode
		umask int
	}{
		{"default", vhostuser.DefaultSocketMode, 0o022},
		{"default under umask 0", vhostuser.DefaultSocketMode, 0},
		{"group widened past the umask", 0o660, 0o077},
		{"world", 0o666, 0o022},
		{"narrowed", 0o400, 0o022},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcheck.Check(t)
			// The umask is process-wide: no parallel subtests here.
			old := syscall.Umask(tc.umask)
			defer syscall.Umask(old)
			sock := filepath.Join(t.TempDir(), "s")
			l, err := vhostuser.ListenMode(sock, tc.mode)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			fi, err := os.Lstat(sock)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != tc.mode {
				t.Fatalf("socket mode %v, want %v", fi.Mode(), tc.mode)
			}
		})
	}
	t.Run("Listen is 0600", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "s")
		l, err := vhostuser.Listen(sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if fi, err := os.Lstat(sock); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v, %v; want 0600", fi.Mode(), err)
		}
	})
}

// otherGroup is a group the socket's creator does not create files with
// that it may still give them: a supplementary group, or any group as root.
func otherGroup(t *testing.T) int {
	t.Helper()
	if os.Geteuid() == 0 {
		return os.Getegid() + 4242
	}
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		if g != os.Getegid() {
			return g
		}
	}
	t.Skip("no supplementary group to give the socket, and not root")
	return -1
}

// TestListenModeGroup: the socket file gets the group asked, with the
// group bits of the mode, whatever the umask.
func TestListenModeGroup(t *testing.T) {
	for _, tc := range []struct {
		name string
		gid  func(t *testing.T) int
	}{
		{"the creator's own group", func(*testing.T) int { return os.Getegid() }},
		{"another group", otherGroup},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcheck.Check(t)
			old := syscall.Umask(0o077)
			defer syscall.Umask(old)
			gid := tc.gid(t)
			sock := filepath.Join(t.TempDir(), "s")
			l, err := vhostuser.ListenModeGroup(sock, 0o660, gid)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var st unix.Stat_t
			if err := unix.Lstat(sock, &st); err != nil {
				t.Fatal(err)
			}
			if int(st.Gid) != gid || st.Mode&0o777 != 0o660 {
				t.Fatalf("socket gid %d mode %#o, want gid %d mode 0660", st.Gid, st.Mode&0o777, gid)
			}
		})
	}
}

// TestListenModeGroupNotOurs: without root, a group the process is not a
// member of is refused, and no socket is left at the path.
func TestListenModeGroupNotOurs(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may give the socket any group")
	}
	fdcheck.Check(t)
	member := map[int]bool{os.Getegid(): true}
	groups, _ := os.Getgroups()
	for _, g := range groups {
		member[g] = true
	}
	gid := 65534
	for member[gid] {
		gid--
	}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := vhostuser.ListenModeGroup(sock, 0o660, gid)
	if err == nil {
		l.Close()
		t.Fatalf("group %d, not ours, was given to the socket", gid)
	}
	if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "socket group") {
		t.Errorf("error %v, want a permission error naming the socket group", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestListenExistingPath: what is found at the socket path decides.
func TestListenExistingPath(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, dir, path string)
		ok      bool
		wantErr error
	}{
		{"stale socket of a dead backend is replaced", func(t *testing.T, dir, path string) {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false)
			l.Close()
		}, true, nil},
		{"live socket is refused", func(t *testing.T, dir, path string) {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}, false, unix.EADDRINUSE},
		{"symlink to nothing is refused", func(t *testing.T, dir, path string) {
			if err := os.Symlink(filepath.Join(dir, "target"), path); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
		{"symlink to a stale socket is refused", func(t *testing.T, dir, path string) {
			target := filepath.Join(dir, "target")
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: target, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false)
			l.Close()
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
		{"regular file is refused", func(t *testing.T, dir, path string) {
			if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
		{"directory is refused", func(t *testing.T, dir, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdcheck.Check(t)
			dir := t.TempDir()
			path := filepath.Join(dir, "s")
			tc.prepare(t, dir, path)
			before, _ := os.Lstat(path)
			targetBefore, targetErr := os.Lstat(filepath.Join(dir, "target"))
			l, lerr := vhostuser.Listen(path)
			if tc.ok {
				if lerr != nil {
					t.Fatal(lerr)
				}
				defer l.Close()
				c, err := net.Dial("unix", path)
				if err != nil {
					t.Fatalf("the new socket does not accept: %v", err)
				}
				c.Close()
				return
			}
			if lerr == nil {
				l.Close()
				t.Fatal("Listen succeeded")
			}
			if tc.wantErr != nil && !errors.Is(lerr, tc.wantErr) {
				t.Fatalf("Listen: %v, want %v", lerr, tc.wantErr)
			}
			// Nothing was removed, replaced or created, here or behind a link.
			after, aerr := os.Lstat(path)
			if aerr != nil || !os.SameFile(before, after) || after.Mode() != before.Mode() {
				t.Fatalf("the path changed: %v", aerr)
			}
			targetAfter, err := os.Lstat(filepath.Join(dir, "target"))
			if (targetErr == nil) != (err == nil) || targetErr == nil && !os.SameFile(targetBefore, targetAfter) {
				t.Fatalf("the symlink's target changed: %v -> %v", targetErr, err)
			}
		})
	}
}

// TestListenPathLengthLimit: a path of 107 bytes (sun_path less its NUL)
// is bound; one byte more is refused with an error that says why, not
// bind's bare "invalid argument".
func TestListenPathLengthLimit(t *testing.T) {
	fdcheck.Check(t)
	dir := t.TempDir()
	if len(dir) > 100 {
		t.Skipf("temp dir %s too long to build a 107-byte path in", dir)
	}
	fits := filepath.Join(dir, strings.Repeat("s", 107-len(dir)-1))
	l, err := vhostuser.Listen(fits)
	if err != nil {
		t.Fatalf("%d-byte path: %v", len(fits), err)
	}
	l.Close()
	long := fits + "x"
	l, err = vhostuser.Listen(long)
	if err == nil {
		l.Close()
		t.Fatalf("%d-byte path bound", len(long))
	}
	if !strings.Contains(err.Error(), "at most 107") {
		t.Fatalf("error does not name the limit: %v", err)
	}
	if _, err := os.Lstat(long); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("something was created at the long path: %v", err)
	}
}
