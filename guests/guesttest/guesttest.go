// Package guesttest builds guest modules for host-side tests: each source
// state is compiled once (GOOS=wasip1 GOARCH=wasm -buildmode=c-shared) into
// a cache shared by every test process, $CYXWIZ_GUEST_CACHE or
// <os.TempDir>/cyxwiz-guests.
package guesttest

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	built = map[string][]byte{}
)

// Root is the module root (the folder holding go.mod).
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("guesttest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Build returns the wasm of the guest main package in dir (relative to the
// module root, e.g. "guests/examples/cls-post"), building it if its
// sources or the SDK changed.
func Build(t testing.TB, dir string) []byte {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if b, ok := built[dir]; ok {
		return b
	}
	root := Root(t)
	key := sourceKey(t, root, dir)
	cache := os.Getenv("CYXWIZ_GUEST_CACHE")
	if cache == "" {
		cache = filepath.Join(os.TempDir(), "cyxwiz-guests")
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(cache, filepath.Base(dir)+"-"+key+".wasm")
	if b, err := os.ReadFile(out); err == nil {
		built[dir] = b
		return b
	}
	tmp, err := os.CreateTemp(cache, "build-*.wasm")
	if err != nil {
		t.Fatal(err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-buildmode=c-shared", "-trimpath", "-o", tmp.Name(), "./"+dir)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("guesttest: build %s: %v\n%s", dir, err, msg)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	built[dir] = b
	return b
}

// sourceKey hashes the Go version, go.mod/go.sum, and every .go file a
// guest may import from this module (guests/, loaders/) plus dir.
func sourceKey(t testing.TB, root, dir string) string {
	h := sha256.New()
	io.WriteString(h, runtime.Version()+"\x00"+dir+"\x00")
	for _, f := range []string{"go.mod", "go.sum"} {
		b, _ := os.ReadFile(filepath.Join(root, f))
		h.Write(b)
	}
	for _, d := range []string{"guests", "loaders", dir} {
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() && (e.Name() == "build" || e.Name() == "testdata" && p != filepath.Join(root, dir)) {
				return filepath.SkipDir
			}
			if e.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			io.WriteString(h, p+"\x00")
			h.Write(b)
			return nil
		})
		if err != nil {
			t.Fatalf("guesttest: hash %s: %v", d, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
