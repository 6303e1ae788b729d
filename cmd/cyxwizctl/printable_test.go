package main

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// hostile is text a node (or whatever answers at --addr) may send: an
// escape sequence that retitles the terminal, a bell, a newline and U+202E,
// which shows the rest of the line reversed.
const hostile = "n\x1b]0;pwned\x07\x1b[2J\n\u202eevil"

// hostileNode answers every call with hostile text in each string field.
type hostileNode struct {
	cyxwizpb.UnimplementedDeploymentServiceServer
	inference.UnimplementedGRPCInferenceServiceServer
}

func (hostileNode) status() *cyxwizpb.DeploymentStatus {
	return &cyxwizpb.DeploymentStatus{DeploymentId: hostile, Message: hostile, Owner: hostile,
		State: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED, UpdatedAt: timestamppb.Now(),
		Spec: &cyxwizpb.DeploymentSpec{ModelName: hostile, ModelVersion: hostile, Format: hostile,
			Model: &cyxwizpb.Artifact{Uri: hostile, Sha256: hostile},
			Guests: []*cyxwizpb.GuestModule{{Name: hostile, Artifact: &cyxwizpb.Artifact{Uri: hostile},
				Roles: []cyxwizpb.GuestRole{cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS}}}},
		Progress: &cyxwizpb.Progress{Phase: hostile, DoneBytes: 1, TotalBytes: 2}}
}

func (h hostileNode) ListDeployments(context.Context, *cyxwizpb.ListDeploymentsRequest) (*cyxwizpb.ListDeploymentsResponse, error) {
	return &cyxwizpb.ListDeploymentsResponse{Deployments: []*cyxwizpb.DeploymentStatus{h.status()}}, nil
}

func (h hostileNode) GetDeploymentStatus(context.Context, *cyxwizpb.GetDeploymentStatusRequest) (*cyxwizpb.GetDeploymentStatusResponse, error) {
	return &cyxwizpb.GetDeploymentStatusResponse{Status: h.status()}, nil
}

func (h hostileNode) StopDeployment(context.Context, *cyxwizpb.StopDeploymentRequest) (*cyxwizpb.StopDeploymentResponse, error) {
	return &cyxwizpb.StopDeploymentResponse{Status: h.status()}, nil
}

func (h hostileNode) WatchDeployments(_ *cyxwizpb.WatchDeploymentsRequest, s grpc.ServerStreamingServer[cyxwizpb.DeploymentEvent]) error {
	return s.Send(&cyxwizpb.DeploymentEvent{Status: h.status()})
}

func (hostileNode) ServerMetadata(context.Context, *inference.ServerMetadataRequest) (*inference.ServerMetadataResponse, error) {
	return &inference.ServerMetadataResponse{Name: hostile, Version: hostile, Extensions: []string{hostile}}, nil
}

func (hostileNode) ModelMetadata(context.Context, *inference.ModelMetadataRequest) (*inference.ModelMetadataResponse, error) {
	return &inference.ModelMetadataResponse{Name: hostile}, nil
}

func (hostileNode) ModelInfer(_ context.Context, r *inference.ModelInferRequest) (*inference.ModelInferResponse, error) {
	dt := "FP32"
	if r.ModelName == "bad-datatype" {
		dt = hostile // refused by this side, whose error quotes it
	}
	return &inference.ModelInferResponse{ModelName: r.ModelName,
		Outputs:           []*inference.ModelInferResponse_InferOutputTensor{{Name: hostile, Datatype: dt, Shape: []int64{1}}},
		RawOutputContents: [][]byte{make([]byte, 4)}}, nil
}

// Text the node sends (ids, names, formats, owners, URIs, guest names,
// progress phases, output names, server metadata) reached the terminal
// raw in ls, models, status, stop, watch, info and infer, as did an
// error of this side quoting it: only deployment messages were escaped.
func TestServerTextNeverRaw(t *testing.T) {
	addr := fakeServe(t, func(s *grpc.Server) {
		cyxwizpb.RegisterDeploymentServiceServer(s, hostileNode{})
		inference.RegisterGRPCInferenceServiceServer(s, hostileNode{})
	})
	in := tempFile(t, "x.json", "[1]")
	for _, args := range [][]string{
		{"ls"}, {"models"}, {"status", "d"}, {"stop", "d"}, {"watch"}, {"info"}, {"metadata", "m"},
		{"infer", "m", "--input", "x=" + in}, {"infer", "bad-datatype", "--input", "x=" + in},
	} {
		code, stdout, stderr := ctl(append([]string{"--addr", addr}, args...)...)
		for _, out := range []string{stdout, stderr} {
			if strings.ContainsAny(out, "\x1b\x07\u202e") {
				t.Errorf("%v (exit %d): raw control text in %q", args, code, out)
			}
		}
		if args[0] != "infer" || args[1] != "bad-datatype" {
			if code != 0 {
				t.Errorf("%v: exit %d, stderr %q", args, code, stderr)
			}
		} else if code != 1 {
			t.Errorf("%v: exit %d, want 1", args, code)
		}
	}
}

// Bytes that are not UTF-8 (0x9b alone is CSI on 8-bit terminals) and
// format characters (U+202E shows the rest of a line reversed) passed
// printable as they came: only control characters were escaped.
func TestPrintableNotUTF8AndFormats(t *testing.T) {
	if got, want := printable("a\x9b2J\xffb\u202ec\u200bd über"), `a\x9b2J\xffb\u202ec\u200bd über`; got != want {
		t.Errorf("printable = %q, want %q", got, want)
	}
	if got := printableLines("a\n\xff"); got != "a\n\\xff" || !utf8.ValidString(got) {
		t.Errorf("printableLines = %q", got)
	}
}

// An object with data whose shape or datatype had the wrong type was
// refused as "an object with keys [data datatype shape]: want a nested
// array of values, or {"datatype": ..., "shape": [..], "data": [..]}",
// the very form it had, without saying which field was wrong.
func TestReadJSONObjectBadField(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{`{"datatype": "FP32", "shape": "2", "data": [1, 2]}`, "shape"},
		{`{"datatype": "FP32", "shape": [1.5], "data": [1, 2]}`, "shape"},
		{`{"datatype": 5, "shape": [2], "data": [1, 2]}`, "datatype"},
	} {
		_, err := readJSON(tempFile(t, "x.json", tc.doc), tensor.Invalid)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "an object with keys") {
			t.Errorf("%s: error %v: want one naming %s", tc.doc, err, tc.want)
		}
	}
}

// A number or a boolean where a BYTES value belongs was reported as "got
// json.Number" and "got bool", the decoder's Go types.
func TestReadJSONKindNames(t *testing.T) {
	for doc, want := range map[string]string{`[1]`: "got a number", `[true]`: "got a boolean"} {
		_, err := readJSON(tempFile(t, "x.json", doc), tensor.Bytes)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", doc, err, want)
		}
	}
}

// fullWriter fails every write, as stdout on a full disk does.
type fullWriter struct{}

func (fullWriter) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

// Output that could not be written (stdout redirected to a full disk)
// ended with exit status 0 for every command that prints with Fprintf:
// a script took the lost output for success.
func TestOutputWriteErrorFails(t *testing.T) {
	addr := fakeServe(t, func(s *grpc.Server) {
		cyxwizpb.RegisterDeploymentServiceServer(s, hostileNode{})
		inference.RegisterGRPCInferenceServiceServer(s, hostileNode{})
	})
	in := tempFile(t, "x.json", "[1]")
	for _, args := range [][]string{{"status", "d"}, {"stop", "d"}, {"info"}, {"metadata", "m"}, {"infer", "m", "--input", "x=" + in}} {
		var stderr strings.Builder
		code := run(append([]string{"--addr", addr}, args...), fullWriter{}, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), "write output: "+syscall.ENOSPC.Error()) {
			t.Errorf("%v: exit %d, stderr %q: want 1 and the write error", args, code, stderr.String())
		}
	}
}

// The progress bar still sees the terminal behind the output's writer
// (/dev/null is a character device, as a terminal is).
func TestIsTerminalThroughOutWriter(t *testing.T) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !isTerminal(&outWriter{w: f}) {
		t.Error("isTerminal(outWriter{/dev/null}) = false")
	}
}

type versionsNode struct {
	inference.UnimplementedGRPCInferenceServiceServer
}

func (versionsNode) ModelMetadata(context.Context, *inference.ModelMetadataRequest) (*inference.ModelMetadataResponse, error) {
	return &inference.ModelMetadataResponse{Name: "m", Versions: []string{"1", "2"}, Platform: "onnxruntime_onnx"}, nil
}

// metadata printed "(versions 1, 2, onnxruntime_onnx)": the platform read
// as a third version.
func TestMetadataPlatformNotAVersion(t *testing.T) {
	addr := fakeServe(t, func(s *grpc.Server) { inference.RegisterGRPCInferenceServiceServer(s, versionsNode{}) })
	code, stdout, stderr := ctl("--addr", addr, "metadata", "m")
	if code != 0 || !strings.HasPrefix(stdout, "model:    m (versions: 1, 2)\nplatform: onnxruntime_onnx\n") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
