package main

import (
	"os"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
)

// A model larger than storage.cache_max_size is fetched with a warning and
// kept while it serves. A graceful stop (SIGTERM) closes the cache, then
// unloads the deployments, whose Release evicted that model: the restart
// downloaded it again, which a kill did not. Now it is found cached.
func TestGracefulRestartKeepsOversizedModel(t *testing.T) {
	bin := daemonBinary(t)
	cfg, _, _ := nodeConfig(t)
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	toml := strings.Replace(string(b), "[storage]\n", "[storage]\ncache_max_size = \"1MiB\"\n", 1)
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := artifacttest.New(t)
	big := serveModel(srv, "big", bigModel()) // 16 MiB

	n := startDaemon(t, bin, cfg)
	n.assign(t, big)
	n.waitServing(t, big.id)
	n.term(t)

	n = startDaemon(t, bin, cfg)
	n.waitServing(t, big.id)
	n.check(t, big)
	if h := srv.Hits(big.path); h != 1 {
		t.Errorf("the model was downloaded %d times, want once: a graceful restart threw the cached copy away", h)
	}
	n.kill(t)
}
