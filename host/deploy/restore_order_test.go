package deploy_test

import (
	"testing"

	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
)

// A restart serves what served before it. A node at its limit
// (limits.max_deployments, or the memory budget) serving "b" and "c" next
// to a failed "a" (a broken model the Central Server has not stopped:
// still desired running) came back with "a" retrying, "b" serving and "c"
// Failed for want of capacity: Restore admitted the records in id order,
// so the failed one took a serving one's place. (Found checking
// TestPropertyConcurrentLifecycle's restart property.)
func TestRestoreAdmitsServingBeforeFailed(t *testing.T) {
	for name, cfg := range map[string]deploy.Config{
		"max_deployments": {MaxDeployments: 2},
		"memory_budget":   {MemoryBudget: 1000},
	} {
		t.Run(name, func(t *testing.T) {
			srv := artifacttest.New(t)
			dir := t.TempDir()
			spec := func(id string, model []byte) deploy.Spec {
				s := linearSpec(id, srv.Add("/"+id, model))
				s.Resources.MemoryBytes = 400
				return s
			}
			n1 := newNode(t, nodeOpts{dir: dir, withStore: true, cfg: cfg, quiet: true})
			if _, err := n1.m.Assign("a", spec("a", []byte("not a model")), deploy.OwnerCentral); err != nil {
				t.Fatal(err)
			}
			waitSettled(t, n1.m, "a", deploy.Failed)
			for _, id := range []string{"b", "c"} {
				if _, err := n1.m.Assign(id, spec(id, linear(1)), deploy.OwnerCentral); err != nil {
					t.Fatal(err)
				}
				waitSettled(t, n1.m, id, deploy.Ready)
			}
			n1.close()

			n2 := newNode(t, nodeOpts{dir: dir, withStore: true, cfg: cfg, quiet: true})
			if err := n2.m.Restore(); err != nil {
				t.Fatal(err)
			}
			waitSettled(t, n2.m, "b", deploy.Ready)
			waitSettled(t, n2.m, "c", deploy.Ready)
			waitSettled(t, n2.m, "a", deploy.Failed)
		})
	}
}
