package server

import (
	"reflect"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
)

// Every field of a spec survives the trip through the wire format.
func TestSpecProtoRoundTrip(t *testing.T) {
	spec := deploy.Spec{
		Name: "ocr", Version: "3", Format: "onnx",
		Model: artifact.Artifact{URI: "https://example.com/m.onnx", SHA256: "ab", Size: 7},
		Guests: []deploy.Guest{
			{Name: "pre", Artifact: artifact.Artifact{URI: "file:///g.wasm"}, Roles: []string{"preprocess"},
				MemoryLimitPages: 160, CallTimeout: 250 * time.Millisecond, Instances: 3, PreciseClock: true},
			{Name: "post", Artifact: artifact.Artifact{URI: "file:///p.wasm"}, Roles: []string{"postprocess", "batch_policy"}},
		},
		Batching:           engine.Config{MaxBatchSize: 8, PreferredBatchSizes: []int{4, 8}, MaxQueueDelay: 500 * time.Microsecond, QueueCapacity: 64, Instances: 2},
		Resources:          deploy.Resources{MemoryBytes: 1 << 20, CPUThreads: 2, GPUCount: 1, GPUMemoryBytes: 1 << 30, Providers: []string{"cuda", "cpu"}},
		Config:             map[string]string{"labels": "0,180"},
		AllowedDeployments: []string{"other"},
		LoaderOptions:      map[string]string{"k": "v"},
	}
	if got := SpecFromProto(SpecToProto(spec)); !reflect.DeepEqual(got, spec) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, spec)
	}
}
