package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// The node remembers the MaxStopped most recently stopped deployments, in
// memory and in its store; older ones are forgotten, oldest first. A
// Central Server assigning a new id per deployment made both grow without
// end (and every listing and readiness check with them). Serving ones are
// never forgotten, and a restart keeps the bound.
func TestOldStoppedDeploymentsForgotten(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	c, err := artifact.New(filepath.Join(dir, "artifacts"), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := store.Open(filepath.Join(dir, "deployments.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := loaders.NewRegistry(&strictLoader{})
	m := deploy.NewManager(deploy.Config{}, reg, c, st, slog.New(slog.DiscardHandler))
	model := srv.Add("/s", []byte("model"))
	spec := func(i int) deploy.Spec {
		return deploy.Spec{Name: fmt.Sprintf("m%03d", i), Format: "strict", Model: model}
	}
	if _, err := m.Assign("keep", deploy.Spec{Name: "keep", Format: "strict", Model: model}, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	const n = deploy.DefaultKeepStopped + 5
	for i := range n {
		id := fmt.Sprintf("d%03d", i)
		if _, err := m.Assign(id, spec(i), deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
		waitSettled(t, m, id, deploy.Ready)
		if _, err := m.Stop(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	check := func(when string) {
		t.Helper()
		for i := range n {
			id := fmt.Sprintf("d%03d", i)
			_, err := m.Get(id)
			_, serr := st.Get(id)
			if i < n-deploy.DefaultKeepStopped {
				if !errors.Is(err, deploy.ErrNotFound) || !errors.Is(serr, store.ErrNotFound) {
					t.Errorf("%s: %s, among the oldest stopped, kept: %v / %v", when, id, err, serr)
				}
			} else if err != nil || serr != nil {
				t.Errorf("%s: %s, among the %d latest stopped, forgotten: %v / %v", when, id, deploy.DefaultKeepStopped, err, serr)
			}
		}
		if d, err := m.Get("keep"); err != nil || !d.State().Serving() {
			t.Errorf("%s: the serving deployment: %v", when, err)
		}
		if got := len(m.List()); got != deploy.DefaultKeepStopped+1 {
			t.Errorf("%s: %d deployments listed, want %d", when, got, deploy.DefaultKeepStopped+1)
		}
	}
	check("after the stops")
	// An id forgotten takes a new deployment as any new id does.
	if _, err := m.Assign("d000", spec(0), deploy.OwnerCentral); err != nil {
		t.Fatalf("a forgotten id assigned again: %v", err)
	}
	waitSettled(t, m, "d000", deploy.Ready)
	if _, err := m.Stop(context.Background(), "d000"); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// d000 is now the latest stopped; d005 (the oldest kept) goes.
	m = deploy.NewManager(deploy.Config{}, reg, c, st, slog.New(slog.DiscardHandler))
	defer m.Close(context.Background())
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get("d000"); err != nil {
		t.Errorf("after a restart: the latest stopped forgotten: %v", err)
	}
	if _, err := m.Get("d005"); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("after a restart: d005 kept past the bound: %v", err)
	}
	if got := len(m.List()); got != deploy.DefaultKeepStopped+1 {
		t.Errorf("after a restart: %d deployments, want %d", got, deploy.DefaultKeepStopped+1)
	}
}

// Failed deployments count with the stopped ones: a Central Server
// assigning a new id per attempt against a dead URL made them grow without
// end, in memory, in the store and in every list. A node.toml model's
// failure is never forgotten (its id is the operator's).
func TestOldFailedDeploymentsForgotten(t *testing.T) {
	dir := t.TempDir()
	c, err := artifact.New(filepath.Join(dir, "artifacts"), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := store.Open(filepath.Join(dir, "deployments.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const keep = 3
	m := deploy.NewManager(deploy.Config{KeepStopped: keep}, loaders.NewRegistry(&strictLoader{}), c, st, slog.New(slog.DiscardHandler))
	missing := artifact.Artifact{URI: "file://" + filepath.Join(dir, "missing.onnx")}
	if _, err := m.Assign("op", deploy.Spec{Name: "op", Format: "strict", Model: missing}, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, m, "op", deploy.Failed)
	const n = keep + 4
	for i := range n {
		id := fmt.Sprintf("f%d", i)
		if _, err := m.Assign(id, deploy.Spec{Name: id, Format: "strict", Model: missing}, deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
		waitSettled(t, m, id, deploy.Failed)
	}
	// The last failures' goroutines forget after publishing Failed: Close
	// waits for them.
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("f%d", i)
		_, err := m.Get(id)
		_, serr := st.Get(id)
		if i < n-keep {
			if !errors.Is(err, deploy.ErrNotFound) || !errors.Is(serr, store.ErrNotFound) {
				t.Errorf("%s, among the oldest failed, kept: %v / %v", id, err, serr)
			}
		} else if err != nil || serr != nil {
			t.Errorf("%s, among the %d latest failed, forgotten: %v / %v", id, keep, err, serr)
		}
	}
	if d, err := m.Get("op"); err != nil || d.State() != deploy.Failed {
		t.Errorf("the operator's failed model forgotten: %v", err)
	}
	if got := len(m.List()); got != keep+1 {
		t.Errorf("%d deployments listed, want %d", got, keep+1)
	}
}
