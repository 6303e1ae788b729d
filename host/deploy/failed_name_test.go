package deploy_test

import (
	"errors"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
)

// A model name two failed deployments wanted answers with the one that
// failed last, every time: Model picked one of them in map order, so
// ModelReady and Infer named either deployment's failure, changing from
// call to call.
func TestModelOfTwoFailedAnswersTheLatest(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{quiet: true})
	for _, id := range []string{"b", "a", "c"} {
		if _, err := n.m.Assign(id, linearSpec("m", srv.Add("/"+id, []byte("not a model "+id))), deploy.OwnerCentral); err != nil {
			t.Fatal(err)
		}
		waitSettled(t, n.m, id, deploy.Failed)
	}
	for range 50 {
		d, err := n.m.Model("m", "")
		if !errors.Is(err, deploy.ErrFailed) {
			t.Fatalf("err = %v, want ErrFailed", err)
		}
		if d.ID() != "c" {
			t.Fatalf("Model(m) answered with %s (%v), want c, the last to fail", d.ID(), err)
		}
	}
}
