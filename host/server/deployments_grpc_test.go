package server

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/store"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// These tests call the DeploymentService as the Central Server does: over
// a real gRPC connection, through the server's codec and interceptors.

// pathErrLoader fails every load quoting the path it was given, as real
// loaders do ("load /models/m.onnx: ...").
type pathErrLoader struct{}

func (pathErrLoader) Format() string   { return "patherr" }
func (pathErrLoader) Available() error { return nil }
func (pathErrLoader) Load(_ context.Context, path string, _ loaders.Options) (loaders.Model, error) {
	return nil, fmt.Errorf("load %s: %w", path, loaders.ErrInvalidModel)
}

// rpcNode serves a manager (over the slow test model and pathErrLoader,
// with st as its store when not nil) over gRPC and returns a client.
func rpcNode(t *testing.T, st *store.Store) (*deploy.Manager, cyxwizpb.DeploymentServiceClient, string) {
	t.Helper()
	uri := "file://" + writeFile(t, t.TempDir(), "m.bin", []byte("x"))
	m := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(slowLoader{&slowModel{}}, pathErrLoader{}), testCache(t), st, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	_, conn, _ := startServer(t, testConfig(t), Services{Deployments: NewDeployments(m), Draining: m.StopWatches})
	return m, cyxwizpb.NewDeploymentServiceClient(conn), uri
}

func rpcCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A deployment whose status message holds bytes that are not UTF-8 (a
// file:// URI's %FF decodes to the byte 0xFF, and the loader's error quotes
// the path) is reported with U+FFFD in their place. It made every call
// that carried its status fail with INTERNAL ("string field contains
// invalid UTF-8"): its own status, the whole ListDeployments, and every
// watch, which ended at its event.
func TestStatusMessageNotUTF8OverGRPC(t *testing.T) {
	m, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	watch, err := c.WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Header(); err != nil { // registered: it misses nothing after
		t.Fatal(err)
	}
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "good", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	// Assigned in the node (a file:// artifact over gRPC needs its digest,
	// and this one must reach the loader unfetched); read over gRPC.
	bad := deploy.Spec{Name: "bad", Format: "patherr", Model: artifact.Artifact{URI: "file:///models/m%FF%FE.bin"}}
	if _, err := m.Assign("bad", bad, deploy.OwnerCentral); err != nil {
		t.Fatal(err)
	}
	if st := apiWait(t, m, "bad"); st.State != deploy.Failed || utf8.ValidString(st.Message) {
		t.Fatalf("test setup: bad is %v %q, want Failed with a message that is not UTF-8", st.State, st.Message)
	}
	check := func(what string, p *cyxwizpb.DeploymentStatus) {
		t.Helper()
		if p.State != cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED || !strings.Contains(p.Message, "/models/m\uFFFD") {
			t.Errorf("%s: %v %q, want FAILED naming /models/m\uFFFD", what, p.State, p.Message)
		}
	}
	got, err := c.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: "bad"})
	if err != nil {
		t.Fatalf("GetDeploymentStatus: %v", err)
	}
	check("GetDeploymentStatus", got.Status)
	list, err := c.ListDeployments(ctx, &cyxwizpb.ListDeploymentsRequest{})
	if err != nil {
		t.Fatalf("ListDeployments: %v", err)
	}
	if len(list.Deployments) != 2 {
		t.Fatalf("ListDeployments: %d deployments, want 2", len(list.Deployments))
	}
	check("ListDeployments", list.Deployments[0])
	snap, err := c.WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: []string{"bad"}, Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := snap.Recv()
	if err != nil {
		t.Fatalf("watch with snapshot: %v", err)
	}
	check("watch snapshot", ev.Status)
	// The watch opened first sees bad fail, and goes on to report good.
	for sawFailed := false; ; {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatalf("live watch: %v", err)
		}
		if ev.Status.DeploymentId == "bad" && ev.Status.State == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED {
			check("live watch", ev.Status)
			sawFailed = true
		}
		if sawFailed {
			break
		}
	}
	if _, err := c.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "good"}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatalf("live watch after the failure: %v", err)
		}
		if ev.Status.DeploymentId == "good" && ev.Status.State == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED {
			break
		}
	}
}

// An empty id names no deployment: the call is INVALID_ARGUMENT, not
// NOT_FOUND (which a Central Server takes for "the deployment is gone"),
// and a watch of [""] is refused rather than left silent forever.
func TestEmptyIDsAreInvalidArgument(t *testing.T) {
	_, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	want := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "is empty") {
			t.Errorf("%s: %v, want InvalidArgument saying the id is empty", what, err)
		}
	}
	_, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{Spec: apiSpec(uri)})
	want("AssignDeployment", err)
	_, err = c.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{})
	want("GetDeploymentStatus", err)
	_, err = c.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{})
	want("StopDeployment", err)
	w, err := c.WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: []string{"a", ""}, Snapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "a", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	_, err = w.Recv()
	want("WatchDeployments [a, \"\"]", err)
	if err != nil && !strings.Contains(err.Error(), "deployment_ids[1]") {
		t.Errorf("watch error %v does not name deployment_ids[1]", err)
	}
	// An unknown id is still NOT_FOUND.
	if _, err := c.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown id: %v, want NotFound", err)
	}
	if _, err := c.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("stop of an unknown id: %v, want NotFound", err)
	}
}

// A new deployment's id is bounded and has no control characters. On a
// node with a store, an id over bbolt's 32 KiB key limit came back as
// INTERNAL with the store's error quoting the id twice; ids are refused
// as INVALID_ARGUMENT with a short message. Ids that look like paths are
// only names.
func TestDeploymentIDsChecked(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() }) // after the manager's Close (cleanups run last first)
	_, c, uri := rpcNode(t, st)
	ctx := rpcCtx(t)
	for name, id := range map[string]string{
		"40000 bytes":   strings.Repeat("x", 40000),
		"513 bytes":     strings.Repeat("y", maxIDBytes+1),
		"newline":       "a\nINFO forged line",
		"NUL":           "a\x00b",
		"DEL":           "a\x7fb",
		"C1 control":    "a\u0085b",
		"escape (ANSI)": "\x1b[2Jx",
	} {
		p := apiSpec(uri)
		p.ModelName = "refused " + name
		_, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: id, Spec: p})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "deployment_id") {
			t.Errorf("id %s: %.200v, want InvalidArgument naming deployment_id", name, err)
		} else if n := len(status.Convert(err).Message()); n > 200 {
			t.Errorf("id %s: message of %d bytes", name, n)
		}
	}
	for i, id := range []string{strings.Repeat("z", maxIDBytes), "../../etc/passwd", "/", "a/b\\c", "über-ü 模型"} {
		p := apiSpec(uri)
		p.ModelName = fmt.Sprintf("m%d", i)
		if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: id, Spec: p}); err != nil {
			t.Errorf("id %.40q: %v", id, err)
			continue
		}
		got, err := c.GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: id})
		if err != nil || got.Status.DeploymentId != id {
			t.Errorf("status of %.40q: %v %v", id, got, err)
		}
		rec, err := st.Get(id)
		if err != nil || rec.ID != id {
			t.Errorf("stored %.40q: %v %v", id, rec.ID, err)
		}
	}
}

// A state filter that names no state (UNSPECIFIED, or a number this node
// does not know) is INVALID_ARGUMENT: it matched nothing, and the client
// read the empty list as "no deployment is in that state".
func TestListStateFilterChecked(t *testing.T) {
	m, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	apiWait(t, m, "d")
	for _, states := range [][]cyxwizpb.DeploymentState{
		{cyxwizpb.DeploymentState_DEPLOYMENT_STATE_UNSPECIFIED},
		{cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY, 99},
		{-1},
	} {
		_, err := c.ListDeployments(ctx, &cyxwizpb.ListDeploymentsRequest{States: states})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "states[") {
			t.Errorf("states %v: %v, want InvalidArgument naming the entry", states, err)
		}
	}
	for _, tc := range []struct {
		states []cyxwizpb.DeploymentState
		n      int
	}{
		{nil, 1},
		{[]cyxwizpb.DeploymentState{cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY, cyxwizpb.DeploymentState_DEPLOYMENT_STATE_RUNNING}, 1},
		{[]cyxwizpb.DeploymentState{cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED}, 0},
	} {
		resp, err := c.ListDeployments(ctx, &cyxwizpb.ListDeploymentsRequest{States: tc.states})
		if err != nil || len(resp.Deployments) != tc.n {
			t.Errorf("states %v: %v %v, want %d deployments", tc.states, resp, err, tc.n)
		}
	}
}

// A watch sends its response headers once it is registered: a client that
// waits for them (no snapshot, nothing deployed yet) then misses no change.
// The headers waited for the first event, so such a client could not tell
// when it was safe to assign.
func TestWatchHeadersOnceRegistered(t *testing.T) {
	_, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	w, err := c.WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: []string{"d"}})
	if err != nil {
		t.Fatal(err)
	}
	header := make(chan error, 1)
	go func() {
		_, err := w.Header()
		header <- err
	}()
	select {
	case err := <-header:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no response headers 3s after opening a watch with nothing to report")
	}
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	ev, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.Snapshot || ev.Status.DeploymentId != "d" || ev.Status.State != cyxwizpb.DeploymentState_DEPLOYMENT_STATE_PENDING {
		t.Fatalf("first event: %v, want d PENDING (live)", ev)
	}
}

// A new deployment's model name and version, and its guests' names, are
// checked as its id is:
// bounded, and without control characters. They are printed as they are
// in cyxwizctl's tables (models, ls, status) and quoted in every KServe
// error about the model: a newline forged rows, an escape sequence drove
// the operator's terminal, and a 40 KB name filled every message.
func TestModelNameAndVersionChecked(t *testing.T) {
	m, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	bad := map[string]string{
		"513 bytes":     strings.Repeat("y", maxIDBytes+1),
		"newline":       "a\nm2\t1\tonnx\tRUNNING",
		"NUL":           "a\x00b",
		"C1 control":    "a\u0085b",
		"escape (ANSI)": "\x1b[2Jx",
	}
	for name, v := range bad {
		for _, field := range []string{"model_name", "model_version", "guests[0].name"} {
			p := apiSpec(uri)
			switch field {
			case "model_name":
				p.ModelName = v
			case "model_version":
				p.ModelVersion = v
			default: // carried in every status and list as the names are
				p.Guests = []*cyxwizpb.GuestModule{{Name: v, Artifact: p.Model, Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS}}}
			}
			_, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d-" + field, Spec: p})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spec."+field) {
				t.Errorf("%s %s: %.200v, want InvalidArgument naming spec.%s", field, name, err, field)
			} else if n := len(status.Convert(err).Message()); n > 200 {
				t.Errorf("%s %s: message of %d bytes", field, name, n)
			}
		}
	}
	if n := len(m.List()); n != 0 {
		t.Fatalf("%d deployments after refused assigns", n)
	}
	p := apiSpec(uri)
	p.ModelName, p.ModelVersion = "über-ü 模型/"+strings.Repeat("z", maxIDBytes-20), "2024-01 rc1"
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "ok", Spec: p}); err != nil {
		t.Fatalf("name %.40q version %q: %v", p.ModelName, p.ModelVersion, err)
	}
}

// A watch names at most maxWatchIDs deployments. Each id is a few bytes on
// the wire and an entry in the watch's filter, kept for the stream's
// lifetime: one 64 MiB request of 11 million short ids held hundreds of
// megabytes for as long as its client kept the stream open.
func TestWatchIDsBounded(t *testing.T) {
	_, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	ids := make([]string, maxWatchIDs+1)
	for i := range ids {
		ids[i] = fmt.Sprintf("d%d", i)
	}
	for _, n := range []int{maxWatchIDs + 1, maxWatchIDs} {
		w, err := c.WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: ids[:n]})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Header(); err != nil && n <= maxWatchIDs {
			t.Fatal(err)
		}
		id := fmt.Sprintf("d%d", n-1)
		p := apiSpec(uri)
		p.ModelName = id
		if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: id, Spec: p}); err != nil {
			t.Fatal(err)
		}
		ev, err := w.Recv()
		switch {
		case n > maxWatchIDs && (status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "deployment_ids")):
			t.Errorf("a watch of %d ids: %v %v, want InvalidArgument naming deployment_ids", n, ev, err)
		case n <= maxWatchIDs && (err != nil || ev.Status.DeploymentId != id):
			t.Errorf("a watch of %d ids: %v %v, want %s's event", n, ev, err, id)
		}
	}
}

// A spec is bounded as encoded: one with a config map of megabytes was
// taken, and every status, list and watch snapshot then carried it (two
// such deployments put ListDeployments past the message limit).
func TestAssignSpecSizeBounded(t *testing.T) {
	m, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	p := apiSpec(uri)
	p.Config = map[string]string{"blob": strings.Repeat("x", maxSpecBytes)}
	_, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "big", Spec: p})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", maxSpecBytes)) {
		t.Fatalf("a spec over the bound: %v, want InvalidArgument", err)
	}
	if n := len(m.List()); n != 0 {
		t.Fatalf("%d deployments after a refused assign", n)
	}
	p.Config = map[string]string{"labels": strings.Repeat("x", 100<<10)}
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "fine", Spec: p}); err != nil {
		t.Fatalf("a 100 KiB config: %v", err)
	}
}

// A file:// artifact assigned over gRPC needs its SHA-256: the node reads
// files its callers may not, and a deployment can hand back what it loads
// (a format guest's error message quoted /etc/passwd to any client). With
// the digest required, a caller loads only a file whose contents it knows.
func TestFileArtifactOverGRPCNeedsDigest(t *testing.T) {
	m, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	for name, p := range map[string]*cyxwizpb.DeploymentSpec{
		"model": {ModelName: "m", Format: "slow", Model: &cyxwizpb.Artifact{Uri: "file:///etc/passwd"}},
		"guest": {ModelName: "m", Format: "slow", Model: &cyxwizpb.Artifact{Uri: uri, Sha256: fileDigest(uri)},
			Guests: []*cyxwizpb.GuestModule{{Name: "pre", Artifact: &cyxwizpb.Artifact{Uri: "FILE:///etc/shadow"},
				Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS}}}},
	} {
		_, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "d-" + name, Spec: p})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "needs its sha256") {
			t.Errorf("%s without a digest: %v, want InvalidArgument", name, err)
		}
	}
	if n := len(m.List()); n != 0 {
		t.Fatalf("%d deployments after refused assigns", n)
	}
	// With the digest of the file as it is, it deploys.
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "ok", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	if st := apiWait(t, m, "ok"); !st.State.Serving() {
		t.Fatalf("a file:// artifact with its digest: %v %s", st.State, st.Message)
	}
}

// node.toml's models are the operator's: StopDeployment over gRPC (the
// Central Server, or anyone who reaches the port) is FAILED_PRECONDITION
// and the model keeps serving. Any client could stop them.
func TestStopRefusesOperatorModels(t *testing.T) {
	m, c, uri := rpcNode(t, nil)
	ctx := rpcCtx(t)
	if _, err := m.Assign("static", deploy.Spec{Name: "static", Format: "slow", Model: artifact.Artifact{URI: uri}}, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	if st := apiWait(t, m, "static"); !st.State.Serving() {
		t.Fatalf("static: %v %s", st.State, st.Message)
	}
	_, err := c.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "static"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node.toml") {
		t.Fatalf("stop of an operator model over gRPC: %v, want FailedPrecondition pointing at node.toml", err)
	}
	if d, _ := m.Get("static"); !d.State().Serving() {
		t.Errorf("the operator's model stopped: %v", d.State())
	}
	// The Central Server's own deployments stop as before.
	if _, err := c.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: "mine", Spec: apiSpec(uri)}); err != nil {
		t.Fatal(err)
	}
	apiWait(t, m, "mine")
	if _, err := c.StopDeployment(ctx, &cyxwizpb.StopDeploymentRequest{DeploymentId: "mine"}); err != nil {
		t.Fatal(err)
	}
}
