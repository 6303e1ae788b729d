package deploy_test

import (
	"errors"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
)

// The Central Server re-sends its unchanged assignments after the operator
// changed node.toml's [inference.batching] and restarted the node: they are
// the same assignments (the spec keeps the zeros it was sent with, and the
// deployment runs with the new defaults). Every one of them was
// ALREADY_EXISTS ("a different spec, stop it first"): the stored spec held
// the old defaults, filled in.
func TestAssignmentsSurviveNewBatchingDefaults(t *testing.T) {
	srv := artifacttest.New(t)
	spec := linearSpec("m", srv.Add("/m", linear(1)))
	spec.Batching = engine.Config{Instances: 1} // the rest left to the node
	before := engine.Config{MaxBatchSize: 8, MaxQueueDelay: 100 * time.Microsecond, QueueCapacity: 64, Instances: 2}
	after := engine.Config{MaxBatchSize: 4, MaxQueueDelay: 300 * time.Microsecond, QueueCapacity: 32, Instances: 3}

	n := newNode(t, nodeOpts{withStore: true, cfg: deploy.Config{Batching: before}})
	if _, err := n.m.Assign("dep-1", spec, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	st := waitSettled(t, n.m, "dep-1", deploy.Ready)
	if b := st.Batching; b.MaxBatchSize != 8 || b.Instances != 1 || b.QueueCapacity != 64 {
		t.Fatalf("runs with %+v, want the node's defaults and its own instances", b)
	}
	dir := n.dir
	n.close()

	n = newNode(t, nodeOpts{dir: dir, withStore: true, cfg: deploy.Config{Batching: after}})
	if err := n.m.Restore(); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-1", deploy.Ready)
	st, err := n.m.Assign("dep-1", spec, deploy.OwnerCentral)
	if errors.Is(err, deploy.ErrExists) || err != nil {
		t.Fatalf("the unchanged assignment after new defaults: %v", err)
	}
	if b := st.Batching; b.MaxBatchSize != 4 || b.MaxQueueDelay != 300*time.Microsecond || b.Instances != 1 {
		t.Fatalf("after the restart it runs with %+v, want the new defaults", b)
	}

	// A deployment stored with the defaults filled in (as nodes did) is
	// the same assignment as the spec with zeros, while the defaults hold.
	filled := spec
	filled.Name = "m2"
	filled.Batching = deploy.WithBatchingDefaults(spec.Batching, after)
	if _, err := n.m.Assign("dep-2", filled, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n.m, "dep-2", deploy.Ready)
	raw := spec
	raw.Name = "m2"
	if _, err := n.m.Assign("dep-2", raw, deploy.OwnerCentral); err != nil {
		t.Fatalf("zeros against the defaults filled in: %v", err)
	}
}
