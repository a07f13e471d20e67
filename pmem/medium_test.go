//go:build linux

package pmem_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/pmem"
)

const testSize = 32 << 20

func createMedium(t *testing.T, opts pmem.Options) (*pmem.Medium, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nvdimm.img")
	opts.Create, opts.Size = true, testSize
	m, err := pmem.Open(path, opts)
	if err != nil {
		t.Fatalf("Open(create): %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m, path
}

func writeFileOfSize(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nvdimm.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestCreateMakesASparseFileOfTheRequestedSize(t *testing.T) {
	m, path := createMedium(t, pmem.Options{})
	if m.Size() != testSize || m.Kind() != pmem.KindFile {
		t.Fatalf("Size() = %d, Kind() = %v; want %d, file", m.Size(), m.Kind(), testSize)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Size() != testSize {
		t.Fatalf("file size = %v (%v), want %d", fi.Size(), err, testSize)
	}
	if used := allocatedBytes(t, path); used > 1<<20 {
		t.Errorf("new medium already uses %d bytes on disk; want it sparse", used)
	}
	want := pmem.DurabilityFlush
	if m.MapSync() {
		want = pmem.DurabilityDAX
	}
	if m.Durability() != want {
		t.Errorf("Durability() = %v with MapSync() = %v; want %v", m.Durability(), m.MapSync(), want)
	}
}

func TestCreateOpensAnExistingFileAsItIs(t *testing.T) {
	path := writeFileOfSize(t, 20<<20)
	m, err := pmem.Open(path, pmem.Options{Create: true, Size: testSize})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Size() != 20<<20 {
		t.Errorf("Size() = %d, want the existing file's %d", m.Size(), 20<<20)
	}
}

func TestStoresSurviveCloseAndReopen(t *testing.T) {
	m, path := createMedium(t, pmem.Options{})
	b, _ := m.Slice(testSize-5, 5)
	copy(b, "hello")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, _ = m.Slice(testSize-5, 5)
	if string(b) != "hello" {
		t.Errorf("after reopen read %q, want %q", b, "hello")
	}
}

func TestOpenOfAMissingFileWithoutCreateFails(t *testing.T) {
	_, err := pmem.Open(filepath.Join(t.TempDir(), "missing.img"), pmem.Options{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want fs.ErrNotExist", err)
	}
}

func TestATooSmallFileIsRefusedNamingItsSizeAndTheMinimum(t *testing.T) {
	path := writeFileOfSize(t, 1<<20)
	_, err := pmem.Open(path, pmem.Options{})
	if !errors.Is(err, pmem.ErrTooSmall) {
		t.Fatalf("err = %v, want ErrTooSmall", err)
	}
	for _, want := range []string{path, "1048576", "16777216", "16 MiB"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestCreateOfATooSmallMediumCreatesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "small.img")
	_, err := pmem.Open(path, pmem.Options{Create: true, Size: 8 << 20})
	if !errors.Is(err, pmem.ErrTooSmall) {
		t.Fatalf("err = %v, want ErrTooSmall", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat after refused create: %v, want not exist", err)
	}
}

func TestCharacterDevicesOtherThanDevDAXAreRefused(t *testing.T) {
	_, err := pmem.Open("/dev/null", pmem.Options{})
	if !errors.Is(err, pmem.ErrUnsupportedMedium) {
		t.Fatalf("Open(/dev/null) err = %v, want ErrUnsupportedMedium", err)
	}
}

func TestASecondOpenInTheSameProcessIsBusy(t *testing.T) {
	m, path := createMedium(t, pmem.Options{})
	for _, opts := range []pmem.Options{{}, {ReadOnly: true}} {
		_, err := pmem.Open(path, opts)
		t.Log(err)
		if !errors.Is(err, pmem.ErrBusy) {
			t.Fatalf("second Open(%+v) err = %v, want ErrBusy", opts, err)
		}
		for _, want := range []string{"nvblk", "pid " + strconv.Itoa(os.Getpid())} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		}
	}
	m.Close()
	again, err := pmem.Open(path, pmem.Options{})
	if err != nil {
		t.Fatalf("Open after the holder closed: %v", err)
	}
	again.Close()
}

func TestAPathThatIsAnotherNameForAnOpenMediumIsBusy(t *testing.T) {
	_, path := createMedium(t, pmem.Options{})
	link := filepath.Join(t.TempDir(), "alias.img")
	if err := os.Link(path, link); err != nil {
		t.Skipf("hard link across temp dirs: %v", err)
	}
	if _, err := pmem.Open(link, pmem.Options{}); !errors.Is(err, pmem.ErrBusy) {
		t.Fatalf("Open(hard link) err = %v, want ErrBusy", err)
	}
}

func TestReadOnlyOpensShareTheClaimButExcludeAWriter(t *testing.T) {
	path := writeFileOfSize(t, testSize)
	first, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	second, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("second read-only Open: %v", err)
	}
	if _, err := pmem.Open(path, pmem.Options{}); !errors.Is(err, pmem.ErrBusy) {
		t.Fatalf("writable Open beside readers err = %v, want ErrBusy", err)
	}
	first.Close()
	// The second reader still holds the shared lock after the first one closed.
	if out := runChild(t, "try", path, false); !strings.Contains(out, "busy") {
		t.Errorf("writer in another process while a reader remains: %q, want busy", out)
	}
	if out := runChild(t, "try", path, true); out != "opened" {
		t.Errorf("reader in another process beside a reader: %q, want opened", out)
	}
	second.Close()
	if out := runChild(t, "try", path, false); out != "opened" {
		t.Errorf("writer in another process after every reader closed: %q, want opened", out)
	}
}

func TestAnotherProcessHoldingTheMediumIsNamedByPid(t *testing.T) {
	path := writeFileOfSize(t, testSize)
	child := startHolder(t, path, false)
	_, err := pmem.Open(path, pmem.Options{})
	if !errors.Is(err, pmem.ErrBusy) {
		t.Fatalf("Open while another process holds it: err = %v, want ErrBusy", err)
	}
	t.Log(err)
	for _, want := range []string{"nvblk", fmt.Sprintf("pid %d", child.Process.Pid)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if _, err := pmem.Open(path, pmem.Options{ReadOnly: true}); !errors.Is(err, pmem.ErrBusy) {
		t.Errorf("read-only Open beside another process's writer: err = %v, want ErrBusy", err)
	}
	stopHolder(t, child)
	m, err := pmem.Open(path, pmem.Options{})
	if err != nil {
		t.Fatalf("Open after the other process exited: %v", err)
	}
	m.Close()
}

func TestARefusedSecondOpenDoesNotDropTheFirstClaimAcrossProcesses(t *testing.T) {
	// Closing any descriptor of a file drops every POSIX lock the process holds on it, so a
	// refused in-process opener must not have opened and closed one.
	_, path := createMedium(t, pmem.Options{})
	if _, err := pmem.Open(path, pmem.Options{}); !errors.Is(err, pmem.ErrBusy) {
		t.Fatalf("second in-process Open err = %v, want ErrBusy", err)
	}
	if out := runChild(t, "try", path, false); !strings.Contains(out, "busy") || !strings.Contains(out, fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("other process opening the medium: %q, want busy naming pid %d", out, os.Getpid())
	}
}

func TestReadOnlyMediumReadsButCannotBeWritten(t *testing.T) {
	path := writeFileOfSize(t, testSize)
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	f.WriteAt([]byte("label"), 4096)
	f.Close()
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
	m, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open of a read-only file: %v", err)
	}
	defer m.Close()
	if !m.ReadOnly() {
		t.Error("ReadOnly() = false")
	}
	b, err := m.Slice(4096, 5)
	if err != nil || string(b) != "label" {
		t.Fatalf("Slice = %q, %v; want %q", b, err, "label")
	}
	if err := m.Zero(0, 4096); !errors.Is(err, pmem.ErrReadOnly) {
		t.Errorf("Zero err = %v, want ErrReadOnly", err)
	}
	if err := m.Persist(0, 4096); !errors.Is(err, pmem.ErrReadOnly) {
		t.Errorf("Persist err = %v, want ErrReadOnly", err)
	}
	if err := m.Flush(); err != nil {
		t.Errorf("Flush of a read-only medium: %v", err)
	}
	if !storeFaults(b) {
		t.Error("a store into a read-only mapping did not fault")
	}
	if b[0] != 'l' {
		t.Errorf("read-only mapping changed to %q", b)
	}
}

// storeFaults reports whether writing b[0] faults, turning the fault into a recoverable panic.
func storeFaults(b []byte) (faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { faulted = recover() != nil }()
	b[0] = 'X'
	return false
}

func TestSliceIsBoundsCheckedForEveryOffsetAndLength(t *testing.T) {
	m, _ := createMedium(t, pmem.Options{})
	size := m.Size()
	cases := []struct {
		name   string
		off, n int64
		ok     bool
	}{
		{"whole medium", 0, size, true},
		{"empty at start", 0, 0, true},
		{"empty at end", size, 0, true},
		{"last byte", size - 1, 1, true},
		{"one past the end", size - 1, 2, false},
		{"offset past the end", size + 1, 0, false},
		{"negative offset", -1, 1, false},
		{"negative length", 0, -1, false},
		{"most negative offset", math.MinInt64, 1, false},
		{"offset plus length overflows", 1, math.MaxInt64, false},
		{"both maximal", math.MaxInt64, math.MaxInt64, false},
		{"max offset, empty", math.MaxInt64, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := m.Slice(tc.off, tc.n)
			if !tc.ok {
				if !errors.Is(err, pmem.ErrOutOfRange) {
					t.Fatalf("Slice(%d, %d) err = %v, want ErrOutOfRange", tc.off, tc.n, err)
				}
				if err := m.Persist(tc.off, tc.n); !errors.Is(err, pmem.ErrOutOfRange) {
					t.Errorf("Persist(%d, %d) err = %v, want ErrOutOfRange", tc.off, tc.n, err)
				}
				if err := m.Zero(tc.off, tc.n); !errors.Is(err, pmem.ErrOutOfRange) {
					t.Errorf("Zero(%d, %d) err = %v, want ErrOutOfRange", tc.off, tc.n, err)
				}
				return
			}
			if err != nil || int64(len(b)) != tc.n || int64(cap(b)) != tc.n {
				t.Fatalf("Slice(%d, %d) = len %d cap %d, %v; want len and cap %d", tc.off, tc.n, len(b), cap(b), err, tc.n)
			}
		})
	}
}

func TestSliceIsAWindowIntoTheMappingNotACopy(t *testing.T) {
	m, _ := createMedium(t, pmem.Options{})
	a, _ := m.Slice(8192, 16)
	b, _ := m.Slice(8192+4, 4)
	copy(a[4:], "abcd")
	if string(b) != "abcd" {
		t.Errorf("second window reads %q, want %q", b, "abcd")
	}
}

func TestPersistedStoresAreVisibleThroughTheFileInEveryPageCacheMode(t *testing.T) {
	for _, mode := range []pmem.Durability{pmem.DurabilityFlush, pmem.DurabilitySync} {
		t.Run(mode.String(), func(t *testing.T) {
			m, path := createMedium(t, pmem.Options{Durability: mode})
			if m.Durability() != mode {
				t.Fatalf("Durability() = %v, want %v", m.Durability(), mode)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for i, off := range []int64{0, 4095, 1 << 20, testSize - 100} {
				b, _ := m.Slice(off, 100)
				payload := bytes.Repeat([]byte{byte('a' + i)}, 100)
				copy(b, payload)
				if err := m.Persist(off, 100); err != nil {
					t.Fatalf("Persist(%d, 100): %v", off, err)
				}
				got := make([]byte, 100)
				if _, err := f.ReadAt(got, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, payload) {
					t.Errorf("ReadAt(%d) after Persist = %q..., want %q...", off, got[:4], payload[:4])
				}
			}
			b, _ := m.Slice(2<<20, 6)
			copy(b, "flushd")
			if err := m.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			got := make([]byte, 6)
			f.ReadAt(got, 2<<20)
			if string(got) != "flushd" {
				t.Errorf("ReadAt after Flush = %q, want %q", got, "flushd")
			}
			if err := m.Persist(testSize, 0); err != nil {
				t.Errorf("Persist of an empty range at the end: %v", err)
			}
		})
	}
}

func TestDAXDurabilityOnAPageCacheFileIsRefused(t *testing.T) {
	probe, path := createMedium(t, pmem.Options{})
	if probe.MapSync() {
		t.Skip("the temp dir is on fsdax; MAP_SYNC held")
	}
	probe.Close()
	_, err := pmem.Open(path, pmem.Options{Durability: pmem.DurabilityDAX})
	t.Log(err)
	if !errors.Is(err, pmem.ErrNotDAX) {
		t.Fatalf("Open(DurabilityDAX) of a page-cache file err = %v, want ErrNotDAX", err)
	}
	if !strings.Contains(err.Error(), "MAP_SYNC") || !strings.Contains(err.Error(), path) {
		t.Errorf("error %q should name the path and say MAP_SYNC was refused", err)
	}
	m, err := pmem.Open(path, pmem.Options{})
	if err != nil {
		t.Fatalf("Open after a refused DAX open (claim must be released): %v", err)
	}
	m.Close()
}

func TestUnknownDurabilityIsRefused(t *testing.T) {
	_, err := pmem.Open(writeFileOfSize(t, testSize), pmem.Options{Durability: 42})
	if !errors.Is(err, pmem.ErrInvalidOptions) {
		t.Fatalf("err = %v, want ErrInvalidOptions", err)
	}
}

func fillPattern(t *testing.T, m *pmem.Medium, off, n int64) {
	t.Helper()
	b, err := m.Slice(off, n)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = byte(i%251) + 1
	}
}

func TestZeroPunchesAHoleAndReadsZero(t *testing.T) {
	m, path := createMedium(t, pmem.Options{})
	const off, n = 1<<20 + 100, 4 << 20
	fillPattern(t, m, 1<<20, 6<<20)
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	before := allocatedBytes(t, path)
	if err := m.Zero(off, n); err != nil {
		t.Fatalf("Zero: %v", err)
	}
	// Measured before reading the range back: a read fault on a tmpfs hole allocates a page.
	after := allocatedBytes(t, path)
	b, _ := m.Slice(off, n)
	if i := bytes.IndexFunc(b, func(r rune) bool { return r != 0 }); i >= 0 {
		t.Fatalf("byte %d of the zeroed range is %#x", off+int64(i), b[i])
	}
	edges, _ := m.Slice(off-1, n+2)
	if edges[0] == 0 || edges[len(edges)-1] == 0 {
		t.Errorf("Zero cleared a neighbouring byte: before %#x, after %#x", edges[0], edges[len(edges)-1])
	}
	f, _ := os.Open(path)
	defer f.Close()
	got := make([]byte, 8192)
	f.ReadAt(got, off+n-8192)
	if !bytes.Equal(got, make([]byte, 8192)) {
		t.Error("the file does not read zero where the mapping does")
	}
	var sfs unix.Statfs_t
	unix.Statfs(path, &sfs)
	switch sfs.Type {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.TMPFS_MAGIC:
		if before-after < n-2*4096 {
			t.Errorf("allocated bytes %d -> %d; want at least %d given back", before, after, n-2*4096)
		}
	default:
		t.Logf("filesystem %#x: allocated bytes %d -> %d", sfs.Type, before, after)
	}
}

func TestZeroInsideOnePageClearsOnlyThoseBytes(t *testing.T) {
	m, _ := createMedium(t, pmem.Options{})
	fillPattern(t, m, 0, 8192)
	if err := m.Zero(4100, 10); err != nil {
		t.Fatal(err)
	}
	b, _ := m.Slice(4099, 12)
	if b[0] == 0 || b[11] == 0 || !bytes.Equal(b[1:11], make([]byte, 10)) {
		t.Errorf("after Zero(4100, 10): % x", b)
	}
}

func TestCloseIsIdempotentAndTheMediumIsUnusableAfter(t *testing.T) {
	m, _ := createMedium(t, pmem.Options{})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := m.Slice(0, 1); !errors.Is(err, pmem.ErrClosed) {
		t.Errorf("Slice after Close err = %v, want ErrClosed", err)
	}
	if err := m.Persist(0, 1); !errors.Is(err, pmem.ErrClosed) {
		t.Errorf("Persist after Close err = %v, want ErrClosed", err)
	}
	if err := m.Zero(0, 1); !errors.Is(err, pmem.ErrClosed) {
		t.Errorf("Zero after Close err = %v, want ErrClosed", err)
	}
	if err := m.Flush(); !errors.Is(err, pmem.ErrClosed) {
		t.Errorf("Flush after Close err = %v, want ErrClosed", err)
	}
}

func openDescriptors(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestOpeningAndClosingLeaksNoDescriptors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nvdimm.img")
	small := writeFileOfSize(t, 1<<20)
	before := openDescriptors(t)
	for range 5 {
		m, err := pmem.Open(path, pmem.Options{Create: true, Size: testSize})
		if err != nil {
			t.Fatal(err)
		}
		pmem.Open(path, pmem.Options{})            // busy in-process
		pmem.Open(small, pmem.Options{})           // too small
		pmem.Open(path+".missing", pmem.Options{}) // missing
		m.Close()
		pmem.Open(path, pmem.Options{Durability: pmem.DurabilityDAX}) // not DAX (or opens)
		r1, _ := pmem.Open(path, pmem.Options{ReadOnly: true})
		r2, _ := pmem.Open(path, pmem.Options{ReadOnly: true})
		r1.Close()
		r2.Close()
	}
	if after := openDescriptors(t); after != before {
		t.Errorf("open descriptors %d before, %d after", before, after)
	}
}

// The child process: PMEM_TEST_CHILD=hold opens the medium and keeps it until stdin closes;
// =try opens it and reports. Each prints one line: "opened" or the error.
func TestHelperChildProcess(t *testing.T) {
	role := os.Getenv("PMEM_TEST_CHILD")
	if role == "" {
		t.Skip("only run as a child of the claim tests")
	}
	m, err := pmem.Open(os.Getenv("PMEM_TEST_PATH"), pmem.Options{ReadOnly: os.Getenv("PMEM_TEST_READONLY") == "1"})
	if err != nil {
		fmt.Println(err)
		os.Exit(0)
	}
	fmt.Println("opened")
	if role == "hold" {
		io.Copy(io.Discard, os.Stdin)
	}
	m.Close()
	os.Exit(0)
}

func childCommand(role, path string, readOnly bool) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperChildProcess$")
	ro := "0"
	if readOnly {
		ro = "1"
	}
	cmd.Env = append(os.Environ(), "PMEM_TEST_CHILD="+role, "PMEM_TEST_PATH="+path, "PMEM_TEST_READONLY="+ro,
		"GORACE=atexit_sleep_ms=0") // the race detector otherwise lingers a second at exit
	return cmd
}

func runChild(t *testing.T, role, path string, readOnly bool) string {
	t.Helper()
	out, err := childCommand(role, path, readOnly).Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	return strings.TrimSpace(string(out))
}

type holder struct {
	*exec.Cmd
	stdin io.Closer
}

func startHolder(t *testing.T, path string, readOnly bool) *holder {
	t.Helper()
	cmd := childCommand("hold", path, readOnly)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{Cmd: cmd, stdin: stdin}
	t.Cleanup(func() { stopHolder(t, h) })
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "opened" {
		t.Fatalf("holder child: %q", line)
	}
	return h
}

func stopHolder(t *testing.T, h *holder) {
	if h.ProcessState != nil {
		return
	}
	h.stdin.Close()
	if err := h.Wait(); err != nil {
		t.Errorf("holder child: %v", err)
	}
}

func TestConcurrentOpensOfOneFileLetExactlyOneWriterIn(t *testing.T) {
	path := writeFileOfSize(t, testSize)
	const openers = 8
	results := make(chan *pmem.Medium, openers)
	for range openers {
		go func() {
			m, err := pmem.Open(path, pmem.Options{})
			if err != nil && !errors.Is(err, pmem.ErrBusy) {
				t.Errorf("Open: %v", err)
			}
			results <- m
		}()
	}
	winners := 0
	for range openers {
		if m := <-results; m != nil {
			winners++
			defer m.Close()
		}
	}
	if winners != 1 {
		t.Fatalf("%d concurrent writers got in, want exactly 1", winners)
	}
}

func TestGoroutinesPersistDisjointRangesOfOneMediumConcurrently(t *testing.T) {
	m, path := createMedium(t, pmem.Options{Durability: pmem.DurabilitySync})
	const workers, block = 4, 4096
	done := make(chan struct{})
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 32 {
				off := int64((i*workers + w) * block)
				b, err := m.Slice(off, block)
				if err != nil {
					t.Error(err)
					return
				}
				for j := range b {
					b[j] = byte(w + 1)
				}
				if err := m.Persist(off, block); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range workers {
		<-done
	}
	f, _ := os.Open(path)
	defer f.Close()
	got := make([]byte, block)
	for i := range 32 * workers {
		f.ReadAt(got, int64(i*block))
		if want := bytes.Repeat([]byte{byte(i%workers + 1)}, block); !bytes.Equal(got, want) {
			t.Fatalf("block %d reads %#x..., want %#x", i, got[0], want[0])
		}
	}
}
