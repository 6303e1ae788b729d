package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
)

// A graceful stop during downloads keeps every deployment's stored state
// (Fetching, resumed after the restart): closing the cache first made the
// download that stopped first fail its deployment (stored FAILED, logged at
// ERROR). Two downloads at once (max_concurrent_fetches is 2) make it
// reliable.
func TestGracefulStopDuringFetchNotFailed(t *testing.T) {
	bin := daemonBinary(t)
	cfg, stateDir, _ := nodeConfig(t)
	srv := artifacttest.New(t)
	n := startDaemon(t, bin, cfg)
	ms := []crashModel{serveModel(srv, "b", bigModel()), serveModel(srv, "c", linearModel(7))}
	for _, m := range ms {
		srv.Stall(m.path)
		n.assign(t, m)
	}
	for range ms {
		waitStalled(t, srv, "both models")
	}
	for _, m := range ms {
		srv.Unstall(m.path)
	}

	n.term(t)
	failed := false
	for _, m := range ms {
		state := storedState(t, filepath.Join(stateDir, "deployments.db"), m.id)
		t.Logf("after SIGTERM: %s stored as %s", m.id, state)
		failed = failed || state == "Failed"
	}
	n.mu.Lock()
	for _, l := range n.log {
		if strings.Contains(l, "deployment failed") {
			t.Log(l)
		}
	}
	n.mu.Unlock()
	if failed || n.logged("deployment failed") {
		t.Errorf("a graceful stop during downloads marked a deployment Failed: the cache closing is not a failure of the deployment")
	}
}
