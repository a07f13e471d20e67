package btt_test

import (
	"fmt"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/crashmedium"
)

// A crash can hit Open while it finishes a write from the flog. The map
// store recovery makes is one more barrier; at every one of them, a second
// crash and a second Open must still leave each sector old-or-new.
func TestCrashDuringRecoveryLeavesEachSectorOldOrNew(t *testing.T) {
	rec := recordConcurrent(t, workload{lbaSize: 4096, seed: 31, setup: 300, ops: 10}, 2)
	// Each image costs three copies of the medium: take a few with one
	// pending write, then only those where both writers were caught
	// between flog and map.
	const maxImages, maxSingles = 8, 3
	var images, singles, points, crashes, mostPending int
	rec.explore(t, func(k int, subset string, img *crashmedium.Image) error {
		if images >= maxImages {
			return nil
		}
		rep, err := btt.Check(img, btt.CheckOptions{})
		if err != nil || len(rep.Problems) == 0 || len(rep.Problems) == 1 && singles >= maxSingles {
			return nil // the workload tests cover these
		}
		if len(rep.Problems) == 1 {
			singles++
		}
		images++
		mostPending = max(mostPending, len(rep.Problems))
		m, err := crashmedium.NewFrom(img.Bytes())
		if err != nil {
			return err
		}
		d, err := btt.Open(m, btt.Options{})
		if err != nil {
			return fmt.Errorf("first open: %w", err)
		}
		if d.Recovered() != len(rep.Problems) {
			return fmt.Errorf("first open recovered %d of %d pending writes", d.Recovered(), len(rep.Problems))
		}
		r := m.Replay()
		for ; !r.Done(); points++ {
			names, keeps := subsets(m.Pending(r.Point()), uint64(k))
			for i, keep := range keeps {
				again, err := r.Image(keep)
				if err != nil {
					return err
				}
				crashes++
				if _, err := verifyCrashImage(rec.h, k, again); err != nil {
					return fmt.Errorf("crash at point %d of recovery's %d barriers (kept %s): %w", r.Point(), m.Barriers(), names[i], err)
				}
			}
			if err := r.Advance(); err != nil {
				return err
			}
		}
		return nil
	})
	if mostPending < 2 {
		t.Fatalf("%v: no crash image had two writes to recover (most %d)", rec.w, mostPending)
	}
	t.Logf("%v: %d images with pending writes (up to %d at once), %d recovery crash points, %d crash images",
		rec.w, images, mostPending, points, crashes)
}
