package deploy_test

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// A deployment pins its artifacts before it waits for a fetch slot: a
// download finishing meanwhile pushed the cache over its budget and evicted
// the waiting deployment's model, cached already, which it then downloaded
// again (after a restart, a node with many deployments fetched twice).
func TestWaitingDeploymentKeepsItsCachedArtifact(t *testing.T) {
	srv := artifacttest.New(t)
	x := srv.Add("/x", bytes.Repeat([]byte("x"), 1000))
	y := srv.Add("/y", bytes.Repeat([]byte("y"), 1000))
	c, err := artifact.New(filepath.Join(t.TempDir(), "artifacts"), 1500, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := deploy.NewManager(deploy.Config{MaxConcurrentFetches: 1}, loaders.NewRegistry(&strictLoader{}), c, nil, slog.New(slog.DiscardHandler))
	defer m.Close(context.Background())
	spec := func(name string, a artifact.Artifact) deploy.Spec {
		return deploy.Spec{Name: name, Format: "strict", Model: a}
	}

	// x is cached, unpinned.
	if _, err := m.Assign("a1", spec("a1", x), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, m, "a1", deploy.Ready)
	if _, err := m.Stop(context.Background(), "a1"); err != nil {
		t.Fatal(err)
	}
	// b's download of y holds the only fetch slot; a2 (x) waits for it.
	release := srv.Stall("/y")
	if _, err := m.Assign("b", spec("b", y), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	for srv.Hits("/y") == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := m.Assign("a2", spec("a2", x), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	// Until a2 holds a pin on x (Release succeeds only on a pinned digest;
	// the pin is given back at once), or 2 s.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if c.Release(x.SHA256) == nil {
			if err := c.Acquire(x.SHA256); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	release() // y completes: the cache is over its budget
	waitSettled(t, m, "b", deploy.Ready)
	waitSettled(t, m, "a2", deploy.Ready)
	if n := srv.Hits("/x"); n != 1 {
		t.Fatalf("x downloaded %d times, want once: evicted while a2 waited for a fetch slot", n)
	}
}
