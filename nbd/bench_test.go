package nbd

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// BenchmarkClientWrite pushes 1 MiB writes from four goroutines over one
// connection, as a migration's copy does, into this package's server (an
// in-memory export) and into qemu-nbd (a raw file in the temp dir), so the
// two can be compared in one run.
func BenchmarkClientWrite(b *testing.B) {
	const piece, size = 1 << 20, 64 << 20
	run := func(b *testing.B, c *Client) {
		data := make([]byte, piece)
		b.SetBytes(piece)
		b.ResetTimer()
		var next sync.Mutex // guards i
		i := 0
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					next.Lock()
					n := i
					i++
					next.Unlock()
					if n >= b.N {
						return
					}
					if _, err := c.WriteAt(data, int64(n%(size/piece))*piece); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if err := c.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("go-server", func(b *testing.B) {
		_, sock := startServer(b, ServerOptions{}, map[string]Export{"disk": newMemExport(4096, size/4096)})
		run(b, dialTest(b, sock, "disk"))
	})
	b.Run("qemu-nbd", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "disk.raw")
		if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
			b.Fatal(err)
		}
		run(b, dialQemu(b, qemuNBD(b, path, "disk"), "disk"))
	})
}
