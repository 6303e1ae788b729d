package deploy_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// The Central Server changes a deployment's guests (here the postprocess
// guest's labels) while the deployment is still downloading its model: the
// node starts it again with the new guests, and it serves with them. It
// answered ALREADY_EXISTS ("stop it first"), though a Ready deployment
// takes the same change as a live swap.
func TestGuestChangeWhileStarting(t *testing.T) {
	n := newGuestNode(t)
	srv := artifacttest.New(t)
	model, err := os.ReadFile(loadertest.NativeLib(t, "models/ppocr-cls.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	first := ocrSpec(n, t, "0,180")
	first.Model = srv.Add("/cls.onnx", model)
	release := srv.Stall("/cls.onnx")
	defer release()
	if _, err := n.m.Assign("ocr", first, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("the model download did not start")
	}
	if st, _ := n.m.Get("ocr"); st.State() != deploy.Fetching {
		t.Fatalf("state %v while its model downloads", st.State())
	}

	next := first
	next.Config = map[string]string{"labels": "upright,flipped"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.m.AssignContext(ctx, "ocr", next, deploy.OwnerCentral); err != nil {
		t.Fatalf("guest change while fetching: %v", err)
	}
	release()
	st, err := n.m.WaitFor(ctx, "ocr", deploy.Settled)
	if err != nil || !st.State.Serving() {
		t.Fatalf("after the change: %v %v (%s)", err, st.State, st.Message)
	}
	if !st.Spec.Equal(next) {
		t.Fatalf("serving spec %+v, want the new one", st.Spec.Config)
	}
	d, err := n.m.Get("ocr")
	if err != nil {
		t.Fatal(err)
	}
	img := pngBytes(t, 320, 80, func(x, y int) bool { return (x/8)%3 == 0 && y > 20 && y < 60 })
	outs, err := d.Infer(ctx, []*tensor.Tensor{strTensor("image", img)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := string(outs[0].Strings[0]); l != "upright" && l != "flipped" {
		t.Fatalf("label %q: the old guests' config serves", l)
	}
}
