package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// A [[models]] entry that admission refuses (here: past
// limits.max_deployments) is listed Failed with its reason, as a static
// model that fails to load is: it was logged once at start-up and then
// nowhere (ListDeployments did not list it, GetDeploymentStatus and
// ModelReady answered NOT_FOUND), as if never declared.
func TestStaticModelRefusedAtAdmissionIsListedFailed(t *testing.T) {
	bin := daemonBinary(t)
	cfg, _, _ := nodeConfig(t)
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(path, linearModel(1).data, 0o644); err != nil {
		t.Fatal(err)
	}
	appendConfig(t, cfg, fmt.Sprintf(`
[limits]
max_deployments = 1

[[models]]
name = "a"
format = "onnx"
path = %[1]q

[[models]]
name = "b"
format = "onnx"
path = %[1]q
`, path))
	n := startDaemon(t, bin, cfg)
	n.waitServing(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), crashWait)
	defer cancel()
	st, err := n.deployments.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: "b"})
	if err != nil {
		t.Fatalf("status of the declared model b: %v; want it listed Failed with the reason (max_deployments)", err)
	}
	if st.Status.State != cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED {
		t.Errorf("b: %v %q, want Failed", st.Status.State, st.Status.Message)
	}
	n.kill(t)
}
