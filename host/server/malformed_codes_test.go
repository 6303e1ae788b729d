package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
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

// Every method answers a request that does not parse with
// INVALID_ARGUMENT, as ModelInfer does, unary and streaming alike: grpc-go
// makes a codec error INTERNAL, which said the node was at fault and
// passed through no interceptor.
func TestMalformedRequestIsInvalidArgumentOnEveryMethod(t *testing.T) {
	m, _, _ := rpcNode(t, nil)
	_, conn, _ := startServer(t, testConfig(t), Services{Deployments: NewDeployments(m), Inference: NewInference(m)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, wire := range map[string][]byte{
		"bad utf8":         {0x0a, 0x02, 0xff, 0xfe},
		"truncated varint": {0x08},
		"length past end":  {0x0a, 0x10, 'a'},
	} {
		for _, method := range []string{
			inference.GRPCInferenceService_ModelReady_FullMethodName,
			inference.GRPCInferenceService_ModelMetadata_FullMethodName,
			cyxwizpb.DeploymentService_GetDeploymentStatus_FullMethodName,
			cyxwizpb.DeploymentService_AssignDeployment_FullMethodName,
			healthpb.Health_Check_FullMethodName,
		} {
			var resp emptypb.Empty
			err := conn.Invoke(ctx, method, &wire, &resp, grpc.ForceCodecV2(preEncoded{wire}))
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s, %s: got %v, want InvalidArgument", method, name, err)
			}
		}
		desc := &grpc.StreamDesc{ServerStreams: true}
		s, err := conn.NewStream(ctx, desc, cyxwizpb.DeploymentService_WatchDeployments_FullMethodName, grpc.ForceCodecV2(preEncoded{wire}))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendMsg(&wire); err != nil {
			t.Fatal(err)
		}
		s.CloseSend()
		if err := s.RecvMsg(new(emptypb.Empty)); status.Code(err) != codes.InvalidArgument {
			t.Errorf("WatchDeployments, %s: got %v, want InvalidArgument", name, err)
		}
	}
	// Well-formed requests still decode.
	if _, err := cyxwizpb.NewDeploymentServiceClient(conn).ListDeployments(ctx, &cyxwizpb.ListDeploymentsRequest{}); err != nil {
		t.Fatal(err)
	}
	if r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", r, err)
	}
}
