package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/qemu-tests/agentproto"
)

// flush is fsync(2) of the whole device: the block layer turns it into a
// virtio-blk FLUSH when the device has a volatile (writeback) cache.
func flush(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dev, err)
	}
	return nil
}

// rangeIoctl issues BLKDISCARD or BLKZEROOUT, whose argument is
// {start, length} in bytes.
func rangeIoctl(st agentproto.Step, req uintptr) error {
	if st.SectorSize == 0 || st.Count == 0 {
		return errors.New("discard/zero-out needs sector_size and count")
	}
	f, err := os.OpenFile(st.Device, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	r := [2]uint64{st.LBA * uint64(st.SectorSize), uint64(st.Count) * uint64(st.SectorSize)}
	if e := ioctlRange(f.Fd(), req, &r); e != 0 {
		name := "BLKDISCARD"
		if req == unix.BLKZEROOUT {
			name = "BLKZEROOUT"
		}
		return fmt.Errorf("%s %s bytes %d+%d: %w", name, st.Device, r[0], r[1], e)
	}
	return nil
}

// checkSectors reads Count sectors with O_DIRECT, so that they come from
// the device and not from what the page cache remembers, and compares
// each with Pattern(Seed), or with zeroes when Seed is empty; one holding
// Pattern(OldSeed) instead counts as old. A regular file (what a program
// in the guest read from its medium, on tmpfs, which has no O_DIRECT) is
// read through the page cache.
func checkSectors(st agentproto.Step) (agentproto.CheckData, error) {
	var d agentproto.CheckData
	flags := os.O_RDONLY | unix.O_DIRECT
	if fi, err := os.Stat(st.Device); err == nil && fi.Mode().IsRegular() {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(st.Device, flags, 0)
	if err != nil {
		return d, err
	}
	defer f.Close()
	const batch = 64
	buf, err := alignedBuffer(batch * st.SectorSize)
	if err != nil {
		return d, err
	}
	defer unix.Munmap(buf)
	zero := make([]byte, st.SectorSize)
	for done := 0; done < st.Count; {
		n := min(batch, st.Count-done)
		lba := st.LBA + uint64(done)
		if _, err := f.ReadAt(buf[:n*st.SectorSize], int64(lba)*int64(st.SectorSize)); err != nil {
			return d, fmt.Errorf("read %d sectors at lba %d: %w", n, lba, err)
		}
		for i := 0; i < n; i++ {
			got := buf[i*st.SectorSize : (i+1)*st.SectorSize]
			want := zero
			if st.Seed != "" {
				want = agentproto.Pattern(st.Seed, lba+uint64(i), st.SectorSize)
			}
			d.Checked++
			if bytes.Equal(got, want) {
				if st.OldSeed != "" {
					d.LastNew = ptr(lba + uint64(i))
				}
				continue
			}
			if st.OldSeed != "" && bytes.Equal(got, agentproto.Pattern(st.OldSeed, lba+uint64(i), st.SectorSize)) {
				if d.Old++; d.FirstOld == nil {
					d.FirstOld = ptr(lba + uint64(i))
				}
				continue
			}
			if d.Differ++; len(d.Mismatches) < 32 {
				d.Mismatches = append(d.Mismatches, lba+uint64(i))
				d.Heads = append(d.Heads, hex.EncodeToString(got[:16]))
			}
		}
		done += n
	}
	if d.Differ > 0 {
		return d, fmt.Errorf("%d of %d sectors differ, first at lba %d", d.Differ, d.Checked, d.Mismatches[0])
	}
	return d, nil
}

// parallelWrite splits Count sectors from LBA into chunks and deals them
// round-robin to Workers goroutines, each locked to its own thread pinned
// to a CPU: blk-mq maps the submitting CPU to a hardware queue, so with as
// many queues as CPUs the chunks travel on different virtqueues at once.
func parallelWrite(st agentproto.Step) ([]agentproto.WorkerData, error) {
	chunk := max(st.Chunk, 1)
	if st.Workers < 1 || st.Count%chunk != 0 || st.SectorSize == 0 {
		return nil, fmt.Errorf("parallel-write: workers %d, count %d, chunk %d", st.Workers, st.Count, chunk)
	}
	out := make([]agentproto.WorkerData, st.Workers)
	errs := make([]error, st.Workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < st.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[w], errs[w] = writeWorker(st, w, chunk, start)
		}()
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return out, err
	}
	return out, flush(st.Device)
}

func writeWorker(st agentproto.Step, w, chunk int, start <-chan struct{}) (agentproto.WorkerData, error) {
	d := agentproto.WorkerData{Worker: w, Pinned: w % runtime.NumCPU()}
	// The thread stays pinned until it exits: it is never unlocked, so the
	// runtime retires it rather than hand a pinned thread to others.
	if err := pinThread(d.Pinned); err != nil {
		return d, fmt.Errorf("worker %d: %w", w, err)
	}
	f, err := os.OpenFile(st.Device, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return d, err
	}
	defer f.Close()
	buf, err := alignedBuffer(chunk * st.SectorSize)
	if err != nil {
		return d, err
	}
	defer unix.Munmap(buf)
	seen := map[int]bool{}
	<-start
	for c := w; c*chunk < st.Count; c += st.Workers {
		lba := st.LBA + uint64(c*chunk)
		copy(buf, agentproto.Patterns(st.Seed, lba, chunk, st.SectorSize))
		if _, err := f.WriteAt(buf, int64(lba)*int64(st.SectorSize)); err != nil {
			return d, fmt.Errorf("worker %d: write lba %d: %w", w, lba, err)
		}
		d.Writes++
		d.LBAs += chunk
		sawCPU(&d, seen)
	}
	return d, nil
}

// pinThread locks the calling goroutine to its thread and the thread to
// cpu, for good: the caller never unlocks, so the runtime retires the
// thread when the goroutine exits rather than hand a pinned thread to
// others.
func pinThread(cpu int) error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	return nil
}

// sawCPU adds the CPU the calling thread runs on (getcpu) to d.CPUs, once.
func sawCPU(d *agentproto.WorkerData, seen map[int]bool) {
	if cpu, ok := getcpu(); ok && !seen[int(cpu)] {
		seen[int(cpu)] = true
		d.CPUs = append(d.CPUs, int(cpu))
	}
}

func waitGone(path string, timeout time.Duration) error {
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still there after %v", path, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// writeTree writes Tree(seed, n) under root, each file fsynced, and
// reports the digests of what it wrote.
func writeTree(root, seed string, n int) ([]agentproto.FileDigest, error) {
	var out []agentproto.FileDigest
	for _, tf := range agentproto.Tree(seed, n) {
		p := filepath.Join(root, tf.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return out, err
		}
		b := tf.Content(seed)
		if err := writeFile(p, b); err != nil {
			return out, err
		}
		sum := sha256.Sum256(b)
		out = append(out, agentproto.FileDigest{Path: tf.Path, Size: len(b), SHA256: hex.EncodeToString(sum[:])})
	}
	return out, nil
}

// hashTree digests every regular file under root, sorted by path; other
// kinds of entries (lost+found is a directory) are walked, not listed.
func hashTree(root string) ([]agentproto.FileDigest, error) {
	var out []agentproto.FileDigest
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		sum := sha256.Sum256(b)
		out = append(out, agentproto.FileDigest{Path: rel, Size: len(b), SHA256: hex.EncodeToString(sum[:])})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, err
}

// rootMount finds the mount of "/" that processes see: the last
// mountinfo line whose mount point is "/" (later mounts hide earlier ones).
func rootMount(want string) (agentproto.RootMountData, error) {
	var d agentproto.RootMountData
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return d, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 || f[4] != "/" {
			continue
		}
		d = agentproto.RootMountData{Source: g[1], FSType: g[0], Line: line}
	}
	if d.Line == "" {
		return d, errors.New("no mount of / in /proc/self/mountinfo")
	}
	if want != "" && d.Source != want {
		return d, fmt.Errorf("/ is %s from %s, want %s", d.FSType, d.Source, want)
	}
	return d, nil
}

// switchRoot does what busybox switch_root does: mount the new root, move
// the pseudo file systems into it, make it "/" and exec its init, which
// stays PID 1. The initramfs is not emptied first: its memory is not
// worth reclaiming in a guest that lives for seconds.
func switchRoot(st agentproto.Step) error {
	root := st.Target
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(st.Source, root, st.FSType, 0, st.Options); err != nil {
		return fmt.Errorf("mount %s on %s as %s: %w", st.Source, root, st.FSType, err)
	}
	for _, dir := range []string{"/dev", "/proc", "/sys", "/tmp"} {
		if err := os.MkdirAll(root+dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(dir, root+dir, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s into the new root: %w", dir, err)
		}
	}
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	init := st.Path
	if init == "" {
		init = "/sbin/init"
	}
	unix.Sync()
	err := unix.Exec(init, []string{init}, []string{"PATH=/sbin:/bin:/usr/sbin:/usr/bin"})
	return fmt.Errorf("exec %s on the new root: %w", init, err)
}

func ptr[T any](v T) *T { return &v }
