// Package loadertest holds what the tests of every loader share: locating the
// native libraries and models that `make deps` fetches, and the conformance
// suite each loader runs.
package loadertest

import (
	"os"
	"path/filepath"
	"testing"
)

// LibDir is the folder `make deps` fills: $CYXWIZ_LIB_DIR, or lib/ at the
// module root found by walking up from the working directory.
func LibDir() string {
	if d := os.Getenv("CYXWIZ_LIB_DIR"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		return "lib"
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "lib")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "lib"
		}
		dir = parent
	}
}

// NativeLib returns the path of rel (e.g. "onnxruntime/libonnxruntime.so.1")
// under LibDir. When the file is missing the test is skipped, except under
// CI=true, where a missing native library is a failure: a skipped test is not
// a pass.
func NativeLib(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(LibDir(), rel)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("native file %s missing (run `make deps`): %v", p, err)
		}
		t.Skipf("native file %s missing (run `make deps`)", p)
	}
	return p
}
