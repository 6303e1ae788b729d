package server

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// A deployment assigned over gRPC takes node.toml's [inference.batching]
// for what its spec leaves at zero (it got the engine's bare defaults: no
// batching, one instance, a queue of 1024).
func TestAssignedSpecTakesNodeBatchingDefaults(t *testing.T) {
	def := engine.Config{MaxBatchSize: 8, PreferredBatchSizes: []int{4, 8}, MaxQueueDelay: 300 * time.Microsecond, QueueCapacity: 77, Instances: 3}
	m, s, uri := apiNode(t, deploy.Config{Batching: def}, &slowModel{})
	for _, tc := range []struct {
		id    string
		given *cyxwizpb.BatchingConfig
		want  engine.Config
	}{
		{"none", nil, def},
		{"instances", &cyxwizpb.BatchingConfig{Instances: 5},
			engine.Config{MaxBatchSize: 8, PreferredBatchSizes: []int{4, 8}, MaxQueueDelay: 300 * time.Microsecond, QueueCapacity: 77, Instances: 5}},
		{"own-max", &cyxwizpb.BatchingConfig{MaxBatchSize: 2},
			engine.Config{MaxBatchSize: 2, MaxQueueDelay: 300 * time.Microsecond, QueueCapacity: 77, Instances: 3}},
		{"off", &cyxwizpb.BatchingConfig{MaxBatchSize: 1, QueueCapacity: 9, MaxQueueDelayUs: 5},
			engine.Config{MaxBatchSize: 1, MaxQueueDelay: 5 * time.Microsecond, QueueCapacity: 9, Instances: 3}},
	} {
		p := apiSpec(uri)
		p.ModelName = tc.id
		p.Batching = tc.given
		if _, err := s.AssignDeployment(context.Background(), &cyxwizpb.AssignDeploymentRequest{DeploymentId: tc.id, Spec: p}); err != nil {
			t.Fatalf("%s: %v", tc.id, err)
		}
		st := apiWait(t, m, tc.id)
		if given := SpecFromProto(p).Batching; !reflect.DeepEqual(st.Spec.Batching, given) {
			t.Errorf("%s: the spec reports batching %+v, want it as assigned (%+v)", tc.id, st.Spec.Batching, given)
		}
		got := st.Batching
		if got.MaxBatchSize != tc.want.MaxBatchSize || !slices.Equal(got.PreferredBatchSizes, tc.want.PreferredBatchSizes) ||
			got.MaxQueueDelay != tc.want.MaxQueueDelay || got.QueueCapacity != tc.want.QueueCapacity || got.Instances != tc.want.Instances {
			t.Errorf("%s: batching %+v, want %+v", tc.id, got, tc.want)
		}
	}
	// The defaults handed out are copies: a spec cannot change them.
	m.BatchingDefaults().PreferredBatchSizes[0] = 99
	if m.BatchingDefaults().PreferredBatchSizes[0] != 4 {
		t.Error("BatchingDefaults shares its slice")
	}
}

// The Central Server re-sends its unchanged assignments after the operator
// changed node.toml's [inference.batching] and restarted the node: each is
// the same assignment, and runs with the new defaults. The spec was stored
// with the old defaults filled in, and every re-sent assignment was
// ALREADY_EXISTS ("a different spec, stop it first").
func TestReassignAfterNewBatchingDefaults(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.bin")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := apiSpec("file://" + p)
	spec.Batching = &cyxwizpb.BatchingConfig{Instances: 1}
	node := func(def engine.Config) (*deploy.Manager, func()) {
		st, err := store.Open(filepath.Join(dir, "deployments.db"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := artifact.New(filepath.Join(dir, "artifacts"), 0, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		m := deploy.NewManager(deploy.Config{Batching: def}, loaders.NewRegistry(slowLoader{&slowModel{}}), c, st, quietLog())
		return m, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			m.Close(ctx)
			c.Close()
			st.Close()
		}
	}
	m, closeNode := node(engine.Config{MaxBatchSize: 8, MaxQueueDelay: 100 * time.Microsecond, QueueCapacity: 64, Instances: 2})
	if _, err := NewDeployments(m).AssignDeployment(context.Background(), &cyxwizpb.AssignDeploymentRequest{DeploymentId: "dep-1", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	apiWait(t, m, "dep-1")
	closeNode()

	m, closeNode = node(engine.Config{MaxBatchSize: 4, MaxQueueDelay: 300 * time.Microsecond, QueueCapacity: 32, Instances: 3})
	defer closeNode()
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	apiWait(t, m, "dep-1")
	if _, err := NewDeployments(m).AssignDeployment(context.Background(), &cyxwizpb.AssignDeploymentRequest{DeploymentId: "dep-1", Spec: spec}); err != nil {
		t.Fatalf("the unchanged assignment after new defaults: %v", err)
	}
	if b := apiWait(t, m, "dep-1").Batching; b.MaxBatchSize != 4 || b.MaxQueueDelay != 300*time.Microsecond || b.Instances != 1 {
		t.Fatalf("runs with %+v after the restart, want the new defaults (and its own instances)", b)
	}
}
