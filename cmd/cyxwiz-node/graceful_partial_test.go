package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
)

// A download cut short by a graceful stop (SIGTERM) stays in tmp/ and is
// resumed by the next run: serve closes the cache before the deployments
// (closing the deployments first cancelled the fetch as their own, and the
// partial was deleted).
func TestGracefulStopKeepsPartialDownload(t *testing.T) {
	bin := daemonBinary(t)
	cfg, _, cacheDir := nodeConfig(t)
	srv := artifacttest.New(t)
	artifacts := filepath.Join(cacheDir, "artifacts")

	n := startDaemon(t, bin, cfg)
	b := serveModel(srv, "b", bigModel())
	srv.Stall(b.path)
	n.assign(t, b)
	waitStalled(t, srv, "b")
	half := len(b.data) / 2
	part := waitPartial(t, filepath.Join(artifacts, "tmp"), int64(half))
	srv.Unstall(b.path)

	// A graceful stop, as systemd or an operator does it.
	n.term(t)
	_, statErr := os.Stat(part)
	t.Logf("after SIGTERM: partial %s: %v", filepath.Base(part), statErr)
	if statErr != nil {
		t.Errorf("the partial download (%d bytes) was deleted by a graceful stop: %v", half, statErr)
	}

	n = startDaemon(t, bin, cfg)
	n.waitServing(t, b.id)
	n.check(t, b)
	ranges := srv.Ranges(b.path)
	t.Logf("requests for b after the restart: Range %q", ranges)
	if want := []string{"", fmt.Sprintf("bytes=%d-", half)}; !slices.Equal(ranges, want) {
		t.Errorf("b's requests had Range headers %q, want %q (the cut one, then a resume of the rest)", ranges, want)
	}
	n.kill(t)
}
