package server

import (
	"context"
	"testing"

	"google.golang.org/grpc"
)

// The zero-copy ModelInfer handler answers a request that does not decode
// with InvalidArgument itself (inferRequest.bad): checkedDecode wrapping it
// as well cost every inference request two allocations (the decode
// closure and its undecoded) for nothing.
func TestModelInferHandlerNotWrappedByCheckedDecode(t *testing.T) {
	var handler func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error)
	for _, m := range inferenceDesc().Methods { // as server.New registers it
		if m.MethodName == "ModelInfer" {
			handler = m.Handler
		}
	}
	if handler == nil {
		t.Fatal("no ModelInfer method")
	}
	srv := &Inference{}
	ctx := context.Background()
	dec := func(any) error { return nil }
	stop := func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) { return nil, nil }
	call := func(h func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error)) func() {
		return func() {
			if _, err := h(srv, ctx, dec, stop); err != nil {
				t.Fatal(err)
			}
		}
	}
	base := testing.AllocsPerRun(200, call(modelInferHandler))
	got := testing.AllocsPerRun(200, call(handler))
	if got > base {
		t.Errorf("registered ModelInfer handler: %v allocations before the model is called, want %v (modelInferHandler's own)", got, base)
	}
}
