package guest

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// cacheTmpAge is how old one of wazero's temporary cache files (an entry
// being written, renamed into place when complete) must be to count as
// left behind by a write that never finished (the node was killed).
const cacheTmpAge = time.Hour

// cacheEntry is a file of the compilation cache.
type cacheEntry struct {
	path string
	size int64
	used time.Time
}

// pruneCache removes the least recently used compiled guests of dir (a
// wazero compilation cache: a folder per wazero version, a file per
// compiled module) until they take at most budget bytes, and the
// temporary files of writes that never finished. An entry's last use is
// when wazero last wrote or read it. wazero opens an entry to read it
// whole and writes a new one under a temporary name before renaming it,
// so removing entries under a running runtime is safe: one read already
// open is read to its end, and a module whose entry is gone is compiled
// and written again.
func pruneCache(dir string, budget int64, log *slog.Logger) error {
	versions, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var entries []cacheEntry
	var total int64
	var errs []error
	now := time.Now()
	for _, v := range versions {
		if !v.IsDir() || !strings.HasPrefix(v.Name(), "wazero-") {
			continue
		}
		vdir := filepath.Join(dir, v.Name())
		files, err := os.ReadDir(vdir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		for _, f := range files {
			if !f.Type().IsRegular() {
				continue
			}
			fi, err := f.Info()
			if err != nil {
				continue // removed meanwhile
			}
			p := filepath.Join(vdir, f.Name())
			if strings.HasSuffix(f.Name(), ".tmp") {
				if now.Sub(fi.ModTime()) > cacheTmpAge {
					if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
						errs = append(errs, err)
						continue
					}
					log.Info("guest compilation cache: removed an unfinished write", "file", p, "size", fi.Size())
				}
				continue
			}
			e := cacheEntry{path: p, size: fi.Size(), used: fi.ModTime()}
			if a := accessTime(fi); a.After(e.used) {
				e.used = a
			}
			entries = append(entries, e)
			total += e.size
		}
	}
	if total <= budget {
		return errors.Join(errs...)
	}
	slices.SortFunc(entries, func(a, b cacheEntry) int { return a.used.Compare(b.used) })
	var removed int
	for _, e := range entries {
		if total <= budget {
			break
		}
		if err := os.Remove(e.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		total -= e.size
		removed++
		log.Info("guest compilation cache: removed the least recently used entry", "file", e.path, "size", e.size, "last_used", e.used)
	}
	log.Info("guest compilation cache pruned", "dir", dir, "removed", removed, "kept", len(entries)-removed, "kept_bytes", total, "max_bytes", budget)
	return errors.Join(errs...)
}
