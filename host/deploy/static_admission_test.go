package deploy_test

import (
	"errors"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
)

// A node.toml model (the operator's) refused at admission stays listed,
// Failed with the reason, and clients asking for it are told why: it was
// nowhere (not listed, NOT_FOUND) though the operator declared it. A
// Central Server's refused assign is still not kept: the caller has the
// error.
func TestOperatorModelRefusedAtAdmissionIsFailed(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{cfg: deploy.Config{MaxDeployments: 1}})
	if _, err := n.m.Assign("a", linearSpec("a", srv.Add("/a", linear(1))), deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	st, err := n.m.Assign("b", linearSpec("b", srv.Add("/b", linear(2))), deploy.OwnerOperator)
	wantErr(t, err, deploy.ErrNoCapacity, "max_deployments")
	if st.State != deploy.Failed {
		t.Errorf("refused operator model: status %v, want Failed", st.State)
	}
	got, err := n.m.Get("b")
	if err != nil {
		t.Fatalf("refused operator model not listed: %v", err)
	}
	if s := got.Status(); s.State != deploy.Failed || s.Message == "" {
		t.Errorf("b: %v %q, want Failed with the reason", s.State, s.Message)
	}
	if _, err := n.m.Model("b", ""); !errors.Is(err, deploy.ErrFailed) {
		t.Errorf("model b: %v, want ErrFailed", err)
	}
	waitSettled(t, n.m, "a", deploy.Ready)

	_, err = n.m.Assign("c", linearSpec("c", srv.Add("/c", linear(3))), deploy.OwnerCentral)
	wantErr(t, err, deploy.ErrNoCapacity)
	if _, err := n.m.Get("c"); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("refused Central assign kept: %v", err)
	}
}

// A node.toml model's id stays the operator's when it has failed, even for
// an assign of the very same spec over gRPC: taken over, it became the
// Central Server's, stored, and stoppable over gRPC.
func TestFailedOperatorModelNotTakenOver(t *testing.T) {
	srv := artifacttest.New(t)
	n := newNode(t, nodeOpts{withStore: true, cfg: deploy.Config{MaxDeployments: 1}})
	if _, err := n.m.Assign("a", linearSpec("a", srv.Add("/a", linear(1))), deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	spec := linearSpec("b", srv.Add("/b", linear(2)))
	if _, err := n.m.Assign("b", spec, deploy.OwnerOperator); !errors.Is(err, deploy.ErrNoCapacity) {
		t.Fatalf("b: %v, want ErrNoCapacity", err)
	}
	_, err := n.m.Assign("b", spec, deploy.OwnerCentral)
	wantErr(t, err, deploy.ErrExists, "belongs to the operator")
	if d, err := n.m.Get("b"); err != nil || d.Status().Owner != deploy.OwnerOperator {
		t.Errorf("b after a Central assign: %v, %v; want the operator's", d, err)
	}
	if _, err := n.store.Get("b"); err == nil {
		t.Error("the operator's model was stored as the Central Server's")
	}
}

// A guest that lists one role twice is told so, not that the role is
// "already taken by" itself.
func TestGuestRoleListedTwice(t *testing.T) {
	n := newNode(t, nodeOpts{})
	spec := deploy.Spec{Name: "m", Format: "onnx", Model: artifact.Artifact{URI: "file:///m.onnx"},
		Guests: []deploy.Guest{{Name: "g", Artifact: artifact.Artifact{URI: "file:///g.wasm"}, Roles: []string{"preprocess", "preprocess"}}}}
	_, err := n.m.Assign("d", spec, deploy.OwnerCentral)
	wantErr(t, err, deploy.ErrInvalidSpec, `role "preprocess" is listed twice`)
}
