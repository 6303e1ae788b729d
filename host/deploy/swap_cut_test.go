package deploy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/artifact/artifacttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
)

// A guest swap cut short by a Stop of its deployment, or by the node
// closing, says so: its caller (the Central Server's AssignDeployment) got
// context.Canceled, which reads as its own call cancelled (gRPC
// CANCELLED), though it cancelled nothing.
func TestSwapCutShortSaysWhy(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(*deploy.Manager) // runs while the swap downloads
		want error
	}{
		{"stop", func(m *deploy.Manager) { m.Stop(context.Background(), "dep") }, deploy.ErrNotReady},
		{"close", func(m *deploy.Manager) { m.Close(context.Background()) }, deploy.ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newGuestNode(t)
			srv := artifacttest.New(t)
			post := guesttest.Build(t, "guests/examples/cls-post")
			if st := n.deploy(t, "dep", postSpec(t, n, "a,b", srv.Add("/post1.wasm", post))); !st.State.Serving() {
				t.Fatalf("deploy: %v %s", st.State, st.Message)
			}
			other := append(append([]byte{}, post...), 0, 5, 4, 's', 'w', 'a', 'p')
			next := srv.Add("/post2.wasm", other)
			release := srv.Stall("/post2.wasm")
			defer release()
			swapped := make(chan error, 1)
			go func() {
				_, err := n.m.Assign("dep", postSpec(t, n, "x,y", next), deploy.OwnerCentral)
				swapped <- err
			}()
			deadline := time.Now().Add(waitTimeout)
			for srv.Hits("/post2.wasm") == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the swap never asked for its guest")
				}
				time.Sleep(time.Millisecond)
			}
			tc.cut(n.m)
			err := <-swapped
			if !errors.Is(err, tc.want) || errors.Is(err, context.Canceled) {
				t.Errorf("swap cut short by %s: %v, want %v (not context.Canceled)", tc.name, err, tc.want)
			}
		})
	}
}
