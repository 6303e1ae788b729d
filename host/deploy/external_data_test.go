package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// An ONNX model that keeps its weights in a file next to it loads when the
// operator deployed it (node.toml: the folder is theirs), and is refused
// when it was assigned: next to an assigned model are the other
// deployments' artifacts, which it could return as its output.
func TestExternalDataOperatorOnly(t *testing.T) {
	n := newGuestNode(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "weights.bin"), []byte("WEIGHTS!"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ext.onnx")
	if err := os.WriteFile(path, onnxtest.ExternalData("weights.bin", 8), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := deploy.Spec{Name: "ext", Format: "onnx", Model: artifact.Artifact{URI: "file://" + path}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if _, err := n.m.Assign("central", spec, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	st, err := n.m.WaitFor(ctx, "central", deploy.Settled)
	if err != nil || st.State != deploy.Failed || !strings.Contains(st.Message, "external data") {
		t.Fatalf("assigned: %v %q %v, want Failed for its external data", st.State, st.Message, err)
	}

	spec.Name = "ext-op"
	if _, err := n.m.Assign("operator", spec, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	if st, err := n.m.WaitFor(ctx, "operator", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("operator's: %v %q %v", st.State, st.Message, err)
	}
	d, _ := n.m.Get("operator")
	outs, err := d.Infer(ctx, []*tensor.Tensor{tensor.FromSlice("x", tensor.FP32, []int64{1}, []float32{0})}, nil)
	if err != nil || string(outs[0].Data) != "WEIGHTS!" {
		t.Fatalf("operator's model: %v %v", outs, err)
	}
}
