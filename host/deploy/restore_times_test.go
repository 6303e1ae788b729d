package deploy_test

import (
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
)

// A restart keeps each deployment's times: created when it was first
// assigned, updated at its last change. A stopped one shows when it
// stopped, and one that cannot come back is updated when it fails, not
// moved back (in the store too) to its creation.
func TestRestoreKeepsUpdatedTimes(t *testing.T) {
	srv := artifacttest.New(t)
	dir := t.TempDir()
	n1 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if _, err := n1.m.Assign("stopped", linearSpec("s", srv.Add("/s", linear(1))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "stopped", deploy.Ready)
	if _, err := n1.m.Stop(t.Context(), "stopped"); err != nil {
		t.Fatal(err)
	}
	missing := artifact.Artifact{URI: "file://" + dir + "/missing.onnx"}
	if _, err := n1.m.Assign("loser", linearSpec("m", missing), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "loser", deploy.Failed)
	if _, err := n1.m.Assign("winner", linearSpec("m", srv.Add("/w", linear(2))), deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, n1.m, "winner", deploy.Ready)
	stopped, err := n1.store.Get("stopped")
	if err != nil {
		t.Fatal(err)
	}
	loser, err := n1.store.Get("loser")
	if err != nil {
		t.Fatal(err)
	}
	n1.close()

	n2 := newNode(t, nodeOpts{dir: dir, withStore: true})
	if err := n2.m.Restore(); err != nil {
		t.Fatal(err)
	}
	d, err := n2.m.Get("stopped")
	if err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); !st.Updated.Equal(stopped.Updated) || !st.Created.Equal(stopped.Created) {
		t.Errorf("stopped: created %v updated %v; stored created %v updated %v", st.Created, st.Updated, stopped.Created, stopped.Updated)
	}
	st := waitSettled(t, n2.m, "loser", deploy.Failed)
	if st.Updated.Before(loser.Updated) {
		t.Errorf("loser: updated %v, before its last change %v (created %v)", st.Updated, loser.Updated, loser.Created)
	}
	rec, err := n2.store.Get("loser")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Updated.Before(loser.Updated) || !rec.Created.Equal(loser.Created) {
		t.Errorf("loser stored: created %v updated %v; was created %v updated %v", rec.Created, rec.Updated, loser.Created, loser.Updated)
	}
}
