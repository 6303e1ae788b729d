package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

const (
	pending  = cyxwizpb.DeploymentState_DEPLOYMENT_STATE_PENDING
	fetching = cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FETCHING
	ready    = cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY
	stopped  = cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED
)

// A deploy that ends stopped (someone ran `stop` while it was loading) never
// became ready: it exits 1 and says so.
func TestDeployEndingStopped(t *testing.T) {
	addr, _ := startFakeDeployments(t, pending, fetching, stopped)
	model := tempFile(t, "m.onnx", "x")
	code, out, errOut := ctl("--addr", addr, "--timeout", "10s", "deploy", "--id", "d", "--model", model)
	if code != 1 || !strings.Contains(errOut, "deployment d stopped before it was ready") || !strings.Contains(out, "d: stopped") {
		t.Errorf("deploy ended stopped: exit %d, stdout %q stderr %q", code, out, errOut)
	}
}

// --max-batch, --instances and --guest-memory-pages outside uint32 (too
// large, or negative) and durations that are negative or, for
// --max-queue-delay, below 1µs are usage errors naming the flag, not values
// sent wrapped or as 0.
func TestDeployNumericFlagsRange(t *testing.T) {
	addr, f := startFakeDeployments(t, ready)
	model := tempFile(t, "m.onnx", "x")
	for _, bad := range [][]string{
		{"--max-batch", "4294967297"}, {"--max-batch", "-1"},
		{"--instances", "4294967298"}, {"--instances", "-1"},
		{"--guest-memory-pages", "4294967296"}, {"--guest-memory-pages", "-1"},
		{"--max-queue-delay", "-1ms"}, {"--max-queue-delay", "500ns"},
		{"--guest-timeout", "-1s"},
	} {
		args := append([]string{"--addr", addr, "deploy", "--id", "d", "--model", model, "--no-wait"}, bad...)
		if code, _, errOut := ctl(args...); code != 2 || !strings.Contains(errOut, bad[0][1:]) {
			t.Errorf("%v: exit %d, stderr %q", bad, code, errOut)
		}
	}
	if len(f.assigns) > 0 {
		t.Fatalf("a refused command line assigned %v", (<-f.assigns).req.Spec.GetBatching())
	}
	code, _, errOut := ctl("--addr", addr, "deploy", "--id", "d", "--model", model, "--no-wait",
		"--max-batch", "4294967295", "--instances", "2", "--max-queue-delay", "1ms")
	if code != 0 {
		t.Fatalf("in range: exit %d, %q", code, errOut)
	}
	b := (<-f.assigns).req.Spec.GetBatching()
	if b.GetMaxBatchSize() != 4294967295 || b.GetInstances() != 2 || b.GetMaxQueueDelayUs() != 1000 {
		t.Errorf("sent %v", b)
	}
}

// Guests given as http(s) URIs carry the digest of their --<role>-sha256
// flag, which they need; local guests get theirs computed.
func TestDeployGuestSHA256Flags(t *testing.T) {
	addr, f := startFakeDeployments(t, ready)
	post := tempFile(t, "post.wasm", "post")
	sum := sha256.Sum256([]byte("post"))
	postSum := hex.EncodeToString(sum[:])
	h1, h2, h3 := strings.Repeat("1", 64), strings.Repeat("2", 64), strings.Repeat("3", 64)
	code, _, errOut := ctl("--addr", addr, "deploy", "--id", "d", "--no-wait",
		"--model", "https://h/m.onnx", "--sha256", h1,
		"--pre", "https://h/pre.wasm", "--pre-sha256", h2,
		"--post", post, "--post-sha256", postSum,
		"--batch-policy", "http://h/bp.wasm", "--batch-policy-sha256", h3)
	if code != 0 {
		t.Fatalf("deploy: exit %d, %q", code, errOut)
	}
	spec := (<-f.assigns).req.Spec
	got := map[string]string{"model": spec.GetModel().GetSha256()}
	for _, g := range spec.GetGuests() {
		got[g.Name] = g.GetArtifact().GetSha256()
	}
	want := map[string]string{"model": h1, "pre": h2, "post": postSum, "batch-policy": h3}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s sha256 sent as %q, want %q", k, got[k], v)
		}
	}

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--pre", "https://h/pre.wasm"}, 2, "--pre-sha256"},
		{[]string{"--pre-sha256", h2}, 2, "--pre-sha256 without --pre"},
		{[]string{"--post", post, "--post-sha256", h3}, 1, "sha256 is " + postSum},
	} {
		args := append([]string{"--addr", addr, "deploy", "--id", "d", "--no-wait", "--model", post}, tc.args...)
		if code, _, errOut := ctl(args...); code != tc.code || !strings.Contains(errOut, tc.msg) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.msg)
		}
	}
}

// deploy's wait for readiness has no deadline unless --timeout is given
// (the assignment call keeps the default one)...
func TestDeployWaitUnbounded(t *testing.T) {
	addr, f := startFakeDeployments(t, pending, fetching, ready)
	model := tempFile(t, "m.onnx", "x")
	code, out, errOut := ctl("--addr", addr, "deploy", "--id", "d", "--model", model)
	if code != 0 || !strings.Contains(out, "d: ready") {
		t.Fatalf("deploy: exit %d, %q %q", code, out, errOut)
	}
	if w := <-f.watches; w.left >= 0 {
		t.Errorf("the wait has a deadline %v away", w.left.Round(time.Second))
	}
	if a := <-f.assigns; a.left < 0 || a.left > defaultTimeout {
		t.Errorf("the assignment's deadline is %v away, want the default %v", a.left, defaultTimeout)
	}
}

// ...and when a given --timeout runs out, the command says the deployment
// goes on and how to follow it.
func TestDeployWaitTimeout(t *testing.T) {
	addr, _ := startFakeDeployments(t, pending, fetching)
	model := tempFile(t, "m.onnx", "x")
	code, out, errOut := ctl("--addr", addr, "--timeout", "300ms", "deploy", "--id", "d", "--model", model)
	if code != 1 || !strings.Contains(errOut, "still fetching on the node") || !strings.Contains(errOut, "cyxwizctl watch d") {
		t.Errorf("timeout while fetching: exit %d, stdout %q stderr %q", code, out, errOut)
	}
}

// `stop ID --drain D` with D past the default --timeout gives the call
// the drain plus a margin; a --timeout given on the command line is kept.
func TestStopDrainDeadline(t *testing.T) {
	addr, f := startFakeDeployments(t, ready)
	if code, out, errOut := ctl("--addr", addr, "stop", "d", "--drain", "2m"); code != 0 {
		t.Fatalf("stop: %d %q %q", code, out, errOut)
	}
	s := <-f.stops
	if s.left < 2*time.Minute || s.req.GetDrainTimeout().AsDuration() != 2*time.Minute {
		t.Errorf("stop --drain 2m: drain %v sent, deadline %v away", s.req.GetDrainTimeout().AsDuration(), s.left.Round(time.Second))
	}
	if code, out, errOut := ctl("--addr", addr, "--timeout", "5s", "stop", "d", "--drain", "2m"); code != 0 {
		t.Fatalf("stop: %d %q %q", code, out, errOut)
	}
	if s = <-f.stops; s.left < 0 || s.left > 5*time.Second {
		t.Errorf("--timeout 5s stop --drain 2m: deadline %v away", s.left.Round(time.Second))
	}
}

// A custom-format model is deployed with its FORMAT guest (the
// safetensors-mlp example): --format-guest sends it with that role, and
// --format defaults to "guest" then (onnx otherwise). deploy had no flag
// for it, so no custom format could be deployed with cyxwizctl.
func TestDeployFormatGuest(t *testing.T) {
	addr, f := startFakeDeployments(t, ready)
	model := tempFile(t, "m.safetensors", "weights")
	g := tempFile(t, "mlp.wasm", "guest")
	for _, tc := range []struct {
		args   []string
		format string
		role   cyxwizpb.GuestRole
	}{
		{[]string{"--format-guest", g}, "guest", cyxwizpb.GuestRole_GUEST_ROLE_FORMAT},
		{[]string{"--format-guest", g, "--format", "custom"}, "custom", cyxwizpb.GuestRole_GUEST_ROLE_FORMAT},
		{[]string{"--pre", g}, "onnx", cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS},
	} {
		args := append([]string{"--addr", addr, "deploy", "--id", "d", "--model", model, "--no-wait"}, tc.args...)
		if code, _, errOut := ctl(args...); code != 0 {
			t.Fatalf("%v: exit %d, %q", tc.args, code, errOut)
		}
		spec := (<-f.assigns).req.Spec
		if spec.GetFormat() != tc.format || len(spec.GetGuests()) != 1 || len(spec.Guests[0].Roles) != 1 || spec.Guests[0].Roles[0] != tc.role {
			t.Errorf("%v: sent format %q, guests %v; want %q and one guest with role %v", tc.args, spec.GetFormat(), spec.GetGuests(), tc.format, tc.role)
		}
	}
}

// status names guest roles as the rest of its output names states, and as
// ABI.md names them (it printed "[GUEST_ROLE_PREPROCESS GUEST_ROLE_BATCH_POLICY]").
func TestStatusGuestRoles(t *testing.T) {
	addr, _ := startFakeDeployments(t, ready)
	code, out, errOut := ctl("--addr", addr, "status", "d")
	if code != 0 || !strings.Contains(out, "guest:    g (preprocess,batch_policy) file:///g.wasm\n") {
		t.Errorf("status: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// A file:// URI given without its digest is a local file: cyxwizctl hashes
// it, as for a plain path (the node takes no file:// artifact over gRPC
// without its SHA-256); one it cannot read fails here, naming the file.
func TestArtifactForHashesFileURIs(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(p, []byte("model"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("model"))
	a, err := artifactFor("file://"+p, "", "model-sha256")
	if err != nil {
		t.Fatal(err)
	}
	if a.Sha256 != hex.EncodeToString(sum[:]) || a.Uri != "file://"+p || a.SizeBytes != 5 {
		t.Errorf("artifact %v, want %s with its digest and size", a, p)
	}
	if _, err := artifactFor("file:///no/such/file.onnx", "", "model-sha256"); err == nil || !strings.Contains(err.Error(), "/no/such/file.onnx") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := artifactFor("file://host/x.onnx", "", "model-sha256"); err == nil {
		t.Error("a file URI with a host was taken")
	}
	// With a digest given, the URI goes as it is (the node verifies it).
	if a, err := artifactFor("file:///elsewhere/m.onnx", "ab", "model-sha256"); err != nil || a.Uri != "file:///elsewhere/m.onnx" || a.Sha256 != "ab" {
		t.Errorf("file URI with a digest: %v, %v", a, err)
	}
}
