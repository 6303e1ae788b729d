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
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	id := hex.EncodeToString(raw[:])
	// Written whole or not at all: a crash must not leave half an id.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return id, nil
}
