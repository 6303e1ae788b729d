package server

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// A request naming very many outputs (a few bytes each on the wire) is
// answered at once: finding one requested twice compared every pair, and
// 100,000 names took the server tens of seconds of CPU. (The decoder now
// takes at most maxEntries; the test sends that many.)
func TestManyRequestedOutputsAnsweredQuickly(t *testing.T) {
	n := newTestNode(t, nil, onnxSpec("linear", "linear.onnx", 8))
	req := &inference.ModelInferRequest{ModelName: "linear",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3}}},
		RawInputContents: [][]byte{f32raw(1, 2, 3)}}
	for i := range maxEntries - 1 {
		req.Outputs = append(req.Outputs, &inference.ModelInferRequest_InferRequestedOutputTensor{Name: strconv.Itoa(i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := n.client.ModelInfer(ctx, req)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `unknown output "0"`) {
		t.Fatalf("%d distinct unknown outputs: %v, want InvalidArgument at once", maxEntries-1, err)
	}
	// Duplicates are still found, among many names too.
	last := strconv.Itoa(maxEntries - 2)
	req.Outputs = append(req.Outputs, &inference.ModelInferRequest_InferRequestedOutputTensor{Name: last})
	_, err = n.client.ModelInfer(ctx, req)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `output "`+last+`" requested twice`) {
		t.Fatalf("a duplicate among many: %v", err)
	}
}

// An error quoting a huge part of the request (a 20 MB model name) is
// answered with its code and a bounded message: the whole message in the
// trailer made the client drop the connection (COMPRESSION_ERROR), failing
// this call and every other one in flight on it with UNAVAILABLE.
func TestHugeErrorMessageKeepsConnection(t *testing.T) {
	slow := &slowModel{gate: make(chan struct{})}
	n := newTestNode(t, slow, slowSpec("slow", 8))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inFlight := make(chan error, 1)
	go func() { _, err := n.client.ModelInfer(ctx, slowReq("slow")); inFlight <- err }()
	waitFor(t, func() bool { return slow.calls.Load() == 1 })

	_, err := n.client.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: strings.Repeat("é", 10<<20)})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("20 MB model name: %v, want NotFound", err)
	}
	if msg := status.Convert(err).Message(); len(msg) > maxStatusMessage || !strings.Contains(msg, "more bytes)") || !utf8.ValidString(msg) {
		t.Fatalf("message of %d bytes (valid UTF-8: %v): %.100q...", len(msg), utf8.ValidString(msg), msg)
	}
	shape := make([]int64, 1<<20)
	shape[0] = -1
	_, err = n.client.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "slow",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: shape}}})
	if status.Code(err) != codes.InvalidArgument || len(status.Convert(err).Message()) > maxStatusMessage {
		t.Fatalf("a shape of 2^20 dimensions: %v", err)
	}
	close(slow.gate)
	if err := <-inFlight; err != nil {
		t.Fatalf("the call in flight on the same connection: %v", err)
	}
}

func TestToStatusCapsMessageKeepsCode(t *testing.T) {
	long := strings.Repeat("x", maxStatusMessage-65) + strings.Repeat("€", 1000)
	for _, err := range []error{
		status.Error(codes.NotFound, long),
		fmt.Errorf("wrapped: %w", status.Error(codes.NotFound, long)),
		fmt.Errorf("%w: %s", deploy.ErrNotFound, long),
	} {
		got := status.Convert(ToStatus(err))
		if got.Code() != codes.NotFound || len(got.Message()) > maxStatusMessage || !utf8.ValidString(got.Message()) ||
			!strings.HasSuffix(got.Message(), "more bytes)") {
			t.Errorf("%.40v...: got %v %.40q... (%d bytes)", err, got.Code(), got.Message(), len(got.Message()))
		}
	}
	if err := ToStatus(status.Error(codes.NotFound, "short")); status.Convert(err).Message() != "short" {
		t.Errorf("a short message changed: %v", err)
	}
}

// Parameters of extensions the node lacks are refused, not ignored: a
// classification request got the raw logits back, and an output meant for a
// shared memory region came back in the response while the client read the
// region. binary_data, meaningless over gRPC, is still ignored.
func TestExtensionParametersRefused(t *testing.T) {
	n := newTestNode(t, nil, onnxSpec("linear", "linear.onnx", 8))
	param := func(k string, v *inference.InferParameter) map[string]*inference.InferParameter {
		return map[string]*inference.InferParameter{k: v}
	}
	i64 := &inference.InferParameter{ParameterChoice: &inference.InferParameter_Int64Param{Int64Param: 2}}
	str := &inference.InferParameter{ParameterChoice: &inference.InferParameter_StringParam{StringParam: "region"}}
	yes := &inference.InferParameter{ParameterChoice: &inference.InferParameter_BoolParam{BoolParam: true}}
	req := func(in, out map[string]*inference.InferParameter) *inference.ModelInferRequest {
		return &inference.ModelInferRequest{ModelName: "linear",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 3}, Parameters: in}},
			RawInputContents: [][]byte{f32raw(1, 1, 1)},
			Outputs:          []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "Y", Parameters: out}}}
	}
	for _, tc := range []struct {
		name    string
		req     *inference.ModelInferRequest
		wantMsg string
	}{
		{"classification", req(nil, param("classification", i64)), `output "Y": parameter "classification"`},
		{"output in shared memory", req(nil, param("shared_memory_region", str)), `output "Y": parameter "shared_memory_region"`},
		{"input in shared memory", req(param("shared_memory_region", str), nil), `input "X": parameter "shared_memory_region"`},
	} {
		_, err := n.client.ModelInfer(context.Background(), tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("%s: %v, want InvalidArgument containing %q", tc.name, err, tc.wantMsg)
		}
	}
	resp, err := n.client.ModelInfer(context.Background(), req(param("binary_data_size", i64), param("binary_data", yes)))
	if err != nil || fmt.Sprint(rawF32(resp.RawOutputContents[0])) != "[9.5 11]" {
		t.Fatalf("binary_data: %v %v", resp, err)
	}
}

// ModelReady and ModelMetadata without a model name are INVALID_ARGUMENT,
// as ModelInfer is: NOT_FOUND read as "no such model" (and ModelReady's
// answer as "the model went away").
func TestEmptyModelNameIsInvalidArgument(t *testing.T) {
	n := newTestNode(t, nil, slowSpec("slow", 8))
	ctx := context.Background()
	_, err := n.client.ModelReady(ctx, &inference.ModelReadyRequest{Version: "1"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "name is empty") {
		t.Errorf("ModelReady: %v, want InvalidArgument", err)
	}
	_, err = n.client.ModelMetadata(ctx, &inference.ModelMetadataRequest{})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "name is empty") {
		t.Errorf("ModelMetadata: %v, want InvalidArgument", err)
	}
	if r, err := n.client.ModelReady(ctx, &inference.ModelReadyRequest{Name: "slow"}); err != nil || !r.Ready {
		t.Fatalf("ModelReady(slow): %v %v", r, err)
	}
}
