package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

func init() {
	registerCode(deploy.ErrNotFound, codes.NotFound)
	// A failed deployment will not serve until assigned again: not a
	// condition to retry, as a loading one is.
	registerCode(deploy.ErrFailed, codes.FailedPrecondition)
	registerCode(deploy.ErrNotReady, codes.Unavailable)
	registerCode(deploy.ErrExists, codes.AlreadyExists)
	registerCode(engine.ErrQueueFull, codes.ResourceExhausted)
	registerCode(engine.ErrInvalidRequest, codes.InvalidArgument)
	registerCode(engine.ErrClosed, codes.Unavailable)
}

// Inference serves the KServe v2 / Open Inference Protocol over the node's
// deployments.
type Inference struct {
	inference.UnimplementedGRPCInferenceServiceServer
	models *deploy.Manager
	name   string
	// inflight is what the ModelInfer requests being served hold, in
	// bytes (inferRequest.size: the encoded message, plus what its typed
	// contents and BYTES elements take decoded); maxInflight bounds it (0:
	// no bound).
	inflight    atomic.Int64
	maxInflight int64
}

// NewInference returns the GRPCInferenceService over models.
func NewInference(models *deploy.Manager) *Inference {
	return &Inference{models: models, name: "cyxwiz-node"}
}

// LimitInflight bounds the bytes that the ModelInfer requests being served
// may hold together (limits.max_inflight_bytes): past it a request is
// RESOURCE_EXHAUSTED at once. Requests wait in deployments' queues holding
// their tensors, and a queue's bound counts requests, not bytes: 256
// queued requests of 55 MB each were 14 GB. 0 removes the bound. Call it
// before serving.
func (s *Inference) LimitInflight(bytes int64) *Inference {
	s.maxInflight = bytes
	return s
}

// admit counts n bytes of a request in flight, or reports that the bound
// is reached; a request admitted must call leave(n).
func (s *Inference) admit(n int64) error {
	if s.maxInflight <= 0 {
		return nil
	}
	if held := s.inflight.Add(n); held > s.maxInflight && held != n {
		s.inflight.Add(-n)
		return status.Errorf(codes.ResourceExhausted, "the node holds %d bytes of inference requests in flight: a request of %d bytes would pass its bound of %d (limits.max_inflight_bytes); retry later", held-n, n, s.maxInflight)
	}
	return nil
}

func (s *Inference) leave(n int64) {
	if s.maxInflight > 0 {
		s.inflight.Add(-n)
	}
}

// ServerLive is true while the process serves.
func (s *Inference) ServerLive(context.Context, *inference.ServerLiveRequest) (*inference.ServerLiveResponse, error) {
	return &inference.ServerLiveResponse{Live: true}, nil
}

// ServerReady is true when every deployment that is meant to serve does
// (none is still pending or loading).
func (s *Inference) ServerReady(context.Context, *inference.ServerReadyRequest) (*inference.ServerReadyResponse, error) {
	return &inference.ServerReadyResponse{Ready: Ready(s.models)}, nil
}

// Ready reports whether no deployment is still on its way to serving.
func Ready(m *deploy.Manager) bool {
	for _, d := range m.List() {
		switch d.State() {
		case deploy.Pending, deploy.Fetching, deploy.Loading:
			return false
		}
	}
	return true
}

// ServerMetadata names the server and the protocol extensions it has.
func (s *Inference) ServerMetadata(context.Context, *inference.ServerMetadataRequest) (*inference.ServerMetadataResponse, error) {
	return &inference.ServerMetadataResponse{Name: s.name, Version: Version, Extensions: []string{}}, nil
}

// ModelReady is true when the model serves; an unknown model is NOT_FOUND,
// an empty name INVALID_ARGUMENT.
func (s *Inference) ModelReady(_ context.Context, req *inference.ModelReadyRequest) (*inference.ModelReadyResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is empty")
	}
	_, err := s.models.Model(req.Name, req.Version)
	if errors.Is(err, deploy.ErrNotReady) {
		return &inference.ModelReadyResponse{Ready: false}, nil
	}
	if err != nil {
		return nil, err
	}
	return &inference.ModelReadyResponse{Ready: true}, nil
}

// ModelMetadata describes a serving model's tensors.
func (s *Inference) ModelMetadata(_ context.Context, req *inference.ModelMetadataRequest) (*inference.ModelMetadataResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is empty")
	}
	d, err := s.models.Model(req.Name, req.Version)
	if err != nil {
		return nil, err
	}
	info := d.Info()
	return &inference.ModelMetadataResponse{
		Name:     d.Name(),
		Versions: []string{d.Version()},
		Platform: info.Platform,
		Inputs:   tensorMetadata(info.Inputs),
		Outputs:  tensorMetadata(info.Outputs),
	}, nil
}

func tensorMetadata(specs []loaders.TensorSpec) []*inference.ModelMetadataResponse_TensorMetadata {
	out := make([]*inference.ModelMetadataResponse_TensorMetadata, len(specs))
	for i, s := range specs {
		out[i] = &inference.ModelMetadataResponse_TensorMetadata{Name: s.Name, Datatype: s.DType.String(), Shape: s.Shape}
	}
	return out
}

// ModelInfer decodes the request's tensors, runs them through the model's
// engine and encodes the outputs the way the inputs came (raw or typed).
func (s *Inference) ModelInfer(ctx context.Context, req *inference.ModelInferRequest) (*inference.ModelInferResponse, error) {
	if req.ModelName == "" {
		return nil, status.Error(codes.InvalidArgument, "model_name is empty")
	}
	d, err := s.models.Model(req.ModelName, req.ModelVersion)
	if err != nil {
		return nil, err
	}
	inputs, err := decodeInputs(req)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", req.ModelName, err)
	}
	names, err := requestedOutputs(req.Outputs)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", req.ModelName, err)
	}
	outs, err := d.Infer(ctx, inputs, names)
	if err != nil {
		return nil, err
	}
	resp := &inference.ModelInferResponse{ModelName: d.Name(), ModelVersion: d.Version(), Id: req.Id}
	encodeOutputs(resp, outs, len(req.RawInputContents) == 0)
	return resp, nil
}

// requestedOutputs lists the names of the requested outputs, refusing one
// asked for twice. A request can carry hundreds of thousands of them (a
// few bytes each): duplicates are found with a set, not by comparing every
// pair, which took seconds of CPU per request.
func requestedOutputs(outs []*inference.ModelInferRequest_InferRequestedOutputTensor) ([]string, error) {
	if len(outs) == 0 {
		return nil, nil
	}
	names := make([]string, len(outs))
	for _, o := range outs {
		if err := unsupportedParams("output", o.Name, o.Parameters); err != nil {
			return nil, err
		}
	}
	var seen map[string]struct{}
	if len(outs) > 8 {
		seen = make(map[string]struct{}, len(outs))
	}
	for i, o := range outs {
		if seen != nil {
			if _, dup := seen[o.Name]; dup {
				return nil, invalid("output %q requested twice", o.Name)
			}
			seen[o.Name] = struct{}{}
		} else if slices.Contains(names[:i], o.Name) {
			return nil, invalid("output %q requested twice", o.Name)
		}
		names[i] = o.Name
	}
	return names, nil
}

// unsupportedParams refuses the tensor parameters of protocol extensions
// this node does not have (ServerMetadata lists none): Triton's
// classification and shared memory. Ignored, they made the node answer
// something else than what was asked (logits for class labels, data in the
// response for data written to a shared memory region the client then
// reads). Other parameters (binary_data, which gRPC has no use for) are
// ignored.
func unsupportedParams(kind, name string, params map[string]*inference.InferParameter) error {
	for _, k := range []string{"classification", "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"} {
		if _, ok := params[k]; ok {
			return invalid("%s %q: parameter %q: this node has no %s extension", kind, name, k, extensionOf(k))
		}
	}
	return nil
}

func extensionOf(param string) string {
	if param == "classification" {
		return "classification"
	}
	return "shared memory"
}
