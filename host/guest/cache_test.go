package guest_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
)

// cacheFiles lists the files under dir by path, with their sizes.
func cacheFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			out[p] = fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sum(files map[string]int64) (n int64) {
	for _, s := range files {
		n += s
	}
	return n
}

// The compilation cache stays within CacheMaxBytes: least recently used
// entries (here those of an older wazero, last used days ago) go first,
// when the runtime starts and after each compile, with the temporary
// files of writes that never finished. It grew by one entry per guest
// version and memory limit, for good (1.5 GB in the test cache).
func TestCompileCacheStaysWithinBudget(t *testing.T) {
	bg := context.Background()
	dir := t.TempDir()
	wasm := zzSlowFormatGuest(1)
	open := func(budget int64) *guest.Runtime {
		rt, err := guest.NewRuntime(bg, guest.Config{CacheDir: dir, CacheMaxBytes: budget}, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rt.Close(bg) })
		return rt
	}
	compileIn := func(rt *guest.Runtime, pages uint32) {
		t.Helper()
		m, err := rt.CompileLimited(bg, wasm, pages)
		if err != nil {
			t.Fatal(err)
		}
		m.Close(bg)
	}

	rt := open(0)
	compileIn(rt, 0)
	rt.Close(bg)
	files := cacheFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("cache holds %v, want one entry", files)
	}
	var entry string
	var size int64
	for entry, size = range files {
	}

	unit := size // each stale entry
	now := time.Now()
	// Times apart by more than the file system's clock tick.
	age := func(p string, d time.Duration) {
		t.Helper()
		if err := os.Chtimes(p, now.Add(-d), now.Add(-d)); err != nil {
			t.Fatal(err)
		}
	}
	age(entry, time.Hour)
	old := filepath.Join(dir, "wazero-v1.0.0-amd64-linux")
	if err := os.Mkdir(old, 0o700); err != nil {
		t.Fatal(err)
	}
	var stale []string // oldest first
	for _, days := range []int{3, 2, 1} {
		p := filepath.Join(old, strings.Repeat(string(rune('0'+days)), 64))
		if err := os.WriteFile(p, make([]byte, unit), 0o600); err != nil {
			t.Fatal(err)
		}
		at := now.Add(-time.Duration(days) * 24 * time.Hour)
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
		stale = append(stale, p)
	}
	unfinished := filepath.Join(filepath.Dir(entry), "ab.123.tmp")
	writing := filepath.Join(filepath.Dir(entry), "cd.456.tmp")
	for _, p := range []string{unfinished, writing} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(unfinished, now.Add(-2*time.Hour), now.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}

	budget := size + 3*unit/2
	rt = open(budget) // prunes before it starts
	files = cacheFiles(t, dir)
	for _, p := range []string{stale[0], stale[1], unfinished} {
		if _, ok := files[p]; ok {
			t.Errorf("%s kept at start", p)
		}
	}
	for _, p := range []string{stale[2], entry, writing} {
		if _, ok := files[p]; !ok {
			t.Errorf("%s removed at start", p)
		}
	}

	// Another memory limit: another entry. The oldest one makes room.
	compileIn(rt, 2048)
	files = cacheFiles(t, dir)
	delete(files, writing) // a write in progress, not counted
	if n := sum(files); n > budget {
		t.Errorf("after a compile the cache holds %d bytes, over its %d: %v", n, budget, files)
	}
	if _, ok := files[stale[2]]; ok || len(files) != 2 {
		t.Errorf("after a compile the cache holds %v, want the two entries of this wazero", files)
	}
	for p := range files {
		if p != entry {
			age(p, 30*time.Minute)
		}
	}
	// And another: the first entry, now the least recently used, goes;
	// its guest compiles again.
	compileIn(rt, 1024)
	if _, ok := cacheFiles(t, dir)[entry]; ok {
		t.Errorf("the least recently used entry %s is kept", entry)
	}
	compileIn(rt, 0)
	if _, ok := cacheFiles(t, dir)[entry]; !ok {
		t.Errorf("the entry %s is not written again", entry)
	}
}
