package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
)

// A graceful stop during downloads keeps every deployment's stored state
// (Fetching, resumed after the restart): closing the cache first made the
// download that stopped first fail its deployment (stored FAILED, logged at
// ERROR). Two downloads at once (max_concurrent_fetches is 2) make it
// reliable.
func TestGracefulStopDuringFetchNotFailed(t *testing.T) {
	lib := loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")
	dir := t.TempDir()
	bin := filepath.Join(dir, "cyxwiz-node")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	stateDir, cacheDir := filepath.Join(dir, "state"), filepath.Join(dir, "cache")
	cfg := filepath.Join(dir, "node.toml")
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
	srv := artifacttest.New(t)
	n := startDaemon(t, bin, cfg)
	ms := []crashModel{serveModel(srv, "b", bigModel()), serveModel(srv, "c", linearModel(7))}
	for _, m := range ms {
		srv.Stall(m.path)
		n.assign(t, m)
	}
	for range ms {
		select {
		case <-srv.Stalled:
		case <-time.After(crashWait):
			t.Fatal("the downloads did not start")
		}
	}
	for _, m := range ms {
		srv.Unstall(m.path)
	}

	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.exited:
	case <-time.After(crashWait):
		t.Fatal("daemon did not stop on SIGTERM")
	}
	n.conn.Close()
	failed := false
	for _, m := range ms {
		state := storedState(t, filepath.Join(stateDir, "deployments.db"), m.id)
		t.Logf("after SIGTERM: %s stored as %s", m.id, state)
		failed = failed || state == "Failed"
	}
	n.mu.Lock()
	for _, l := range n.log {
		if os.Getenv("REVIEW3_LOG") != "" || (len(l) > 0 && review3Contains(l, "deployment failed")) {
			t.Log(l)
		}
	}
	n.mu.Unlock()
	if failed || n.logged("deployment failed") {
		t.Errorf("a graceful stop during downloads marked a deployment Failed: the cache closing is not a failure of the deployment")
	}
}

func review3Contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
