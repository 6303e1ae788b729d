package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// zzSlowConn serves slowSpec("slow") and returns a client connection.
func zzSlowConn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	models := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(slowLoader{&slowModel{}}), nil, nil, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
	})
	spec := slowSpec("slow", 4)
	spec.Model.URI = "file:///mem"
	if _, err := models.Assign("slow", spec, deploy.OwnerOperator); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if st, err := models.WaitFor(ctx, "slow", deploy.Settled); err != nil || !st.State.Serving() {
		t.Fatalf("deploy: %v %v", err, st.State)
	}
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: NewInference(models)})
	return conn
}

// A ModelInferRequest that does not parse is INVALID_ARGUMENT: a codec
// error is always INTERNAL in grpc-go, so the decoder records it and the
// handler answers it.
func TestMalformedRequestIsInvalidArgument(t *testing.T) {
	conn := zzSlowConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	good := []byte{0x0a, 0x04, 's', 'l', 'o', 'w'}
	cases := map[string][]byte{
		"bad utf8 model_name":         {0x0a, 0x02, 0xff, 0xfe},
		"raw_input_contents too long": append(append([]byte(nil), good...), 0x3a, 0x10, 1, 2),
		"truncated varint":            {0x08},
	}
	for name, wire := range cases {
		var resp inference.ModelInferResponse
		err := conn.Invoke(ctx, inference.GRPCInferenceService_ModelInfer_FullMethodName, &wire, &resp, grpc.ForceCodecV2(preEncoded{wire}))
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
}
