package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// A guest swap starts the new guests while AssignDeployment waits: a new
// guest that fails as it starts (here its signature) is the caller's
// artifact failing, FAILED_PRECONDITION with the reason, not INTERNAL; the
// deployment serves on with its old guests.
func TestSwapToFailingGuestIsFailedPrecondition(t *testing.T) {
	// 16 MiB: the "grow" guest reaches it in milliseconds, even under -race
	// on a busy machine (at the default limit it could run past the call
	// timeout first).
	rt, err := guest.NewRuntime(context.Background(), guest.Config{CallTimeout: 5 * time.Second, MemoryLimitPages: 256}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(context.Background()) })
	m, svc, uri := apiNode(t, deploy.Config{Guests: rt, GuestInstances: 1}, &slowModel{})
	_, conn, _ := startServer(t, testConfig(t), Services{Deployments: svc})
	client := cyxwizpb.NewDeploymentServiceClient(conn)

	wasm := filepath.Join(t.TempDir(), "sigcfg.wasm")
	if err := os.WriteFile(wasm, guesttest.Build(t, "host/deploy/testdata/sigcfg"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := apiSpec(uri)
	spec.Guests = []*cyxwizpb.GuestModule{{Name: "pre", Artifact: &cyxwizpb.Artifact{Uri: "file://" + wasm, Sha256: fileDigest("file://" + wasm)},
		Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS}}}
	spec.Config = map[string]string{"sig": "none"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if st, err := m.WaitFor(ctx, "d", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("deploy: %v %s %v", st.State, st.Message, err)
	}
	// Its signature malformed (a bad output, INTERNAL before), or its own
	// error.
	for mode, reason := range map[string]string{"twice": "listed twice", "error": "no signature today", "grow": "memory"} {
		spec.Config = map[string]string{"sig": mode}
		_, err = client.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: spec})
		if s, _ := status.FromError(err); s.Code() != codes.FailedPrecondition || !strings.Contains(s.Message(), reason) {
			t.Errorf("swap to a guest whose signature fails (%s): %v, want FAILED_PRECONDITION with its reason", mode, err)
		}
	}
	if d, err := m.Get("d"); err != nil || !d.State().Serving() || d.Status().Spec.Config["sig"] != "none" {
		t.Fatalf("after the failed swap: %v", err)
	}
}
