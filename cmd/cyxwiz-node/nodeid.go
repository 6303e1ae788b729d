package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// validID is what a node id may look like, written by hand or generated.
var validID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// nodeID returns the node's identity: the configured one, or the one kept
// in stateDir/node-id, generated and written there on first start.
func nodeID(configured, stateDir string) (string, error) {
	if configured != "" {
		if !validID.MatchString(configured) {
			return "", fmt.Errorf("node.id %q: want 1 to 128 letters, digits, '.', '_' or '-'", configured)
		}
		return configured, nil
	}
	path := filepath.Join(stateDir, "node-id")
	// Nodes starting together on a fresh state_dir must all end up with the
	// id that is kept: the first link wins, the others read it back.
	for range 3 {
		b, err := os.ReadFile(path)
		switch {
		case err == nil && len(strings.TrimSpace(string(b))) > 0:
			id := strings.TrimSpace(string(b))
			if !validID.MatchString(id) {
				return "", fmt.Errorf("node id file %s holds %.40q, not an id: fix or delete it (a new id is then generated)", path, id)
			}
			return id, nil
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return "", fmt.Errorf("node id: %w", err)
		}
		id, err := writeNewID(path, err == nil)
		if errors.Is(err, fs.ErrExist) {
			continue // another start linked its id first: read that one
		}
		return id, err
	}
	return "", fmt.Errorf("node id: %s keeps changing under this start", path)
}

// writeNewID generates an id and puts it at path, written whole and synced
// before it appears there. A blank file left at path is replaced; otherwise
// an existing path gives fs.ErrExist.
func writeNewID(path string, replaceBlank bool) (string, error) {
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
	if replaceBlank {
		err = os.Rename(f.Name(), path)
	} else {
		err = os.Link(f.Name(), path)
	}
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", err
		}
		return "", fmt.Errorf("node id: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync() //nolint:errcheck // best effort: the id is in place
		d.Close()
	}
	return id, nil
}
