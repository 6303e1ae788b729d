package server

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// zzPinGuest is a preprocess guest that keeps its first call's input as
// instance state (tensor_pin, which ABI.md allows for a call input: "a call
// input once pinned") and feeds that reference tensor to the model on every
// call.
const zzPinGuest = `package main

import "github.com/cyxwiz/cyxwiz-node/guests/sdk"

func init() { sdk.Register(sdk.Handlers{Preprocess: pre}) }

func main() {}

var ref *sdk.Tensor

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if ref == nil {
		if err := in[0].Pin(); err != nil {
			return nil, err
		}
		ref = in[0]
	}
	return []*sdk.Tensor{ref}, nil
}
`

// zzBuildGuest builds a guest from source in its own module that replaces
// this one (guesttest.Build only takes folders of this module).
func zzBuildGuest(t *testing.T, src string) string {
	t.Helper()
	root := guesttest.Root(t)
	dir := t.TempDir()
	gomod := "module zzguest\n\ngo 1.24\n\nrequire github.com/cyxwiz/cyxwiz-node v0.0.0\n\nreplace github.com/cyxwiz/cyxwiz-node => " + root + "\n"
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"go.mod": []byte(gomod), "go.sum": sum, "main.go": []byte(src)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "guest.wasm")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-buildmode=c-shared", "-trimpath", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOPROXY=off")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guest: %v\n%s", err, msg)
	}
	return out
}

// zzPinNode serves deployment "pin" (slowModel behind zzPinGuest as its
// preprocess guest) and "oth" (slowModel, no guest) over gRPC.
func zzPinNode(t *testing.T) inference.GRPCInferenceServiceClient {
	t.Helper()
	wasm := zzBuildGuest(t, zzPinGuest)
	rt, err := guest.NewRuntime(context.Background(), guest.Config{CallTimeout: 5 * time.Second}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	reg := loaders.NewRegistry(slowLoader{&slowModel{}})
	models := deploy.NewManager(deploy.Config{Guests: rt, GuestInstances: 1}, reg, nil, nil, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
		rt.Close(ctx)
	})
	specs := []deploy.Spec{
		{Name: "pin", Format: "slow", Model: artifact.Artifact{URI: "file:///mem"},
			Guests:   []deploy.Guest{{Name: "pre", Artifact: artifact.Artifact{URI: "file://" + wasm}, Roles: []string{"preprocess"}, Instances: 1}},
			Batching: engine.Config{Instances: 1, QueueCapacity: 8}},
		{Name: "oth", Format: "slow", Model: artifact.Artifact{URI: "file:///mem2"},
			Batching: engine.Config{Instances: 1, QueueCapacity: 8}},
	}
	for _, spec := range specs {
		if _, err := models.Assign(spec.Name, spec, deploy.OwnerOperator); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		st, err := models.WaitFor(ctx, spec.Name, deploy.Settled)
		cancel()
		if err != nil || !st.State.Serving() {
			t.Fatalf("deploy %s: %v %v %s", spec.Name, err, st.State, st.Message)
		}
	}
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: NewInference(models)})
	return inference.NewGRPCInferenceServiceClient(conn)
}

// zzRows: 600x2 FP32 = 4800 bytes, passed to a guest by handle (> 4 KiB).
const zzRows = 600

func zzFill(model string, rows int, v float32) *inference.ModelInferRequest {
	x := make([]float32, 2*rows)
	for i := range x {
		x[i] = v
	}
	return &inference.ModelInferRequest{ModelName: model,
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{int64(rows), 2}}},
		RawInputContents: [][]byte{f32raw(x...)}}
}

// A guest that pins a call input keeps its own copy: the input's data is
// the pooled gRPC request buffer (raw_input_contents alias it), which the
// next request is read into once the response is marshalled.
func TestPinnedInputOwnsItsData(t *testing.T) {
	client := zzPinNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i <= 50; i++ {
		resp, err := client.ModelInfer(ctx, zzFill("pin", zzRows, float32(1+100*min(i, 1)+i)))
		if err != nil {
			t.Fatal(err)
		}
		// The reference is the first request's 1.0s, doubled.
		for j, v := range rawF32(resp.RawOutputContents[0]) {
			if v != 2 {
				t.Fatalf("call %d: element %d = %v, want 2 (the pinned first input, doubled): the pinned tensor changed under the guest", i, j, v)
			}
		}
	}
}

// The pool is the node's: a pinned input of deployment "pin" must not show
// a request to another deployment (a guest saw other tenants' requests).
func TestPinnedInputNotSharedAcrossDeployments(t *testing.T) {
	client := zzPinNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.ModelInfer(ctx, zzFill("pin", zzRows, 1)); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		secret := float32(4200 + i)
		if _, err := client.ModelInfer(ctx, zzFill("oth", zzRows, secret)); err != nil {
			t.Fatal(err)
		}
		// A small request: its buffer is of another size class.
		resp, err := client.ModelInfer(ctx, zzFill("pin", 1, 0))
		if err != nil {
			t.Fatal(err)
		}
		y := rawF32(resp.RawOutputContents[0])
		if y[0] == 2 && y[len(y)-1] == 2 {
			continue
		}
		// The model doubled the guest's tensor (exact in float32): halve it
		// back to the bytes the guest saw, and look for the other
		// deployment's data in them at any offset.
		seen := make([]float32, len(y))
		for j, v := range y {
			seen[j] = v / 2
		}
		pattern := bytes.Repeat(f32raw(secret), 4)
		if bytes.Contains(f32raw(seen...), pattern) {
			t.Fatalf("round %d: pin's response carries the bytes of a request to deployment oth (%v), e.g. element 0 = %v; want all 2", i, secret, y[0])
		}
		t.Fatalf("round %d: pin's output element 0 = %v, want 2: its pinned tensor was overwritten", i, y[0])
	}
}
