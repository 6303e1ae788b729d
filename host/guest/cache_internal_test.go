package guest

import (
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// An entry read since it was written counts as used when it was read:
// pruning removes the one least recently used, not the one least
// recently written.
func TestPruneCacheByLastUse(t *testing.T) {
	dir := t.TempDir()
	v := filepath.Join(dir, "wazero-dev-amd64-linux")
	if err := os.Mkdir(v, 0o700); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	write := func(name string, written, read time.Duration) string {
		p := filepath.Join(v, name)
		if err := os.WriteFile(p, make([]byte, 100), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, now.Add(-read), now.Add(-written)); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hot := write("aa", 72*time.Hour, time.Minute) // written long ago, read a minute ago
	cold := write("bb", 24*time.Hour, 24*time.Hour)
	fi, err := os.Stat(hot)
	if err != nil {
		t.Fatal(err)
	}
	if accessTime(fi).IsZero() {
		t.Skip("no access times here")
	}
	if err := pruneCache(dir, 150, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cold); err == nil {
		t.Error("the entry unused for a day is kept")
	}
	if _, err := os.Stat(hot); err != nil {
		t.Errorf("the entry read a minute ago is removed: %v", err)
	}
}

// A compile whose new cache entry cannot be renamed into place (another
// compile's resetCache removed its temporary file) is cache trouble, to be
// retried, not the module's fault: it failed a valid guest with ErrABI.
func TestCacheTroubleIncludesRename(t *testing.T) {
	dir := t.TempDir()
	rt := &Runtime{cfg: Config{CacheDir: dir}}
	tmp := filepath.Join(dir, "wazero-v1", "abc.tmp")
	rename := &os.LinkError{Op: "rename", Old: tmp, New: filepath.Join(dir, "wazero-v1", "abc"), Err: fs.ErrNotExist}
	if !rt.cacheTrouble(fmt.Errorf("compile: %w", rename)) {
		t.Error("a failed rename into the cache is not cache trouble")
	}
	elsewhere := &os.LinkError{Op: "rename", Old: "/tmp/x", New: "/tmp/y", Err: fs.ErrNotExist}
	if rt.cacheTrouble(elsewhere) {
		t.Error("a rename outside the cache counted as cache trouble")
	}
}
