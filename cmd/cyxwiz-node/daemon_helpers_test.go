package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
)

// TestMain removes the daemon binary the tests share.
func TestMain(m *testing.M) {
	code := m.Run()
	if daemonDir != "" {
		os.RemoveAll(daemonDir)
	}
	os.Exit(code)
}

var (
	daemonOnce sync.Once
	daemonDir  string
	daemonBin  string
	daemonErr  error
)

// daemonBinary builds the daemon once for every test of the package that
// runs it, and returns its path.
func daemonBinary(t *testing.T) string {
	t.Helper()
	daemonOnce.Do(func() {
		if daemonDir, daemonErr = os.MkdirTemp("", "cyxwiz-node-test-"); daemonErr != nil {
			return
		}
		daemonBin = filepath.Join(daemonDir, "cyxwiz-node")
		if out, err := exec.Command("go", "build", "-o", daemonBin, ".").CombinedOutput(); err != nil {
			daemonErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if daemonErr != nil {
		t.Fatal(daemonErr)
	}
	return daemonBin
}

// nodeConfig writes the node.toml the daemon tests run on (loopback gRPC,
// no HTTP, ONNX Runtime from make deps) in a new temp dir, and returns it
// with its state and cache folders.
func nodeConfig(t *testing.T) (cfg, stateDir, cacheDir string) {
	t.Helper()
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	dir := t.TempDir()
	stateDir, cacheDir = filepath.Join(dir, "state"), filepath.Join(dir, "cache")
	cfg = filepath.Join(dir, "node.toml")
	toml := fmt.Sprintf(`[listen]
grpc = "127.0.0.1:0"
http = ""

[storage]
state_dir = %q
cache_dir = %q

[native]
onnxruntime = %q

[inference]
intra_op_threads = 1
inter_op_threads = 1

[terminal]
enabled = false

[metrics]
gpu = false
`, stateDir, cacheDir, lib)
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg, stateDir, cacheDir
}
