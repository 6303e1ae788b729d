package server

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
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
		got := apiWait(t, m, tc.id).Spec.Batching
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
