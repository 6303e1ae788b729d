package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/config"
)

// nodeID returns the node's identity: the configured one, or the one kept
// in stateDir/node-id, generated and written there on first start.
func nodeID(configured, stateDir string) (string, error) {
	if configured != "" {
		if !config.ValidNodeID(configured) {
			return "", fmt.Errorf("node.id %q: want 1 to 128 letters, digits, '.', '_' or '-'", configured)
		}
		return configured, nil
	}
	path := filepath.Join(stateDir, "node-id")
	// Nodes starting together on one state_dir take turns: the first makes
	// the id, the others read it (a lock file, not the store's lock: the
	// id is needed before the store opens, and the store refuses a second
	// node anyway).
	unlock, err := lockFile(filepath.Join(stateDir, ".node-id.lock"))
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	defer unlock()
	removeStaleTemps(stateDir)
	// Anything but a file (a FIFO, a link to a device) is refused before
	// it is read: reading it could block or never end.
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return "", fmt.Errorf("node id: %s is not a regular file (%v): fix or delete it", path, fi.Mode().Type())
	}
	b, err := os.ReadFile(path)
	switch {
	case err == nil && len(strings.TrimSpace(string(b))) > 0:
		id := strings.TrimSpace(string(b))
		if !config.ValidNodeID(id) {
			return "", fmt.Errorf("node id file %s holds %.40q, not an id: fix or delete it (a new id is then generated)", path, id)
		}
		return id, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("node id: %w", err)
	}
	// Missing or blank (a truncation, or a write lost to a power cut); a
	// dangling symlink or anything else that is not a file is the
	// operator's to fix.
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return "", fmt.Errorf("node id: %s is not a regular file (%v): fix or delete it", path, fi.Mode().Type())
	}
	return writeNewID(path)
}

// lockFile takes an exclusive lock on path (created if need be), waiting
// for it; unlock releases it.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// writeNewID generates an id and puts it at path, written whole and synced
// before it appears there (it replaces what is there).
func writeNewID(path string) (string, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	id := hex.EncodeToString(raw[:])
	f, err := os.CreateTemp(filepath.Dir(path), ".node-id-*")
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync() //nolint:errcheck // best effort: the id is in place
		d.Close()
	}
	return id, nil
}

// removeStaleTemps removes the temporary id files of starts that died
// before linking them (older than a minute: a concurrent start's is young).
func removeStaleTemps(dir string) {
	olds, _ := filepath.Glob(filepath.Join(dir, ".node-id-*"))
	for _, p := range olds {
		if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() && time.Since(fi.ModTime()) > time.Minute {
			os.Remove(p)
		}
	}
}
