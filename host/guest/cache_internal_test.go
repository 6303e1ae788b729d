package guest

import (
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
