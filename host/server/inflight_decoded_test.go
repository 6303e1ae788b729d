package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/artifact"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/host/engine"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// gateModel is a model of one input "in" of type dt, rank 1, whose runs
// wait for a token on gate (or their context) and answer the input.
type gateModel struct {
	gate chan struct{}
	dt   tensor.DType
}

func (m gateModel) Info() loaders.Info {
	spec := []loaders.TensorSpec{{Name: "in", DType: m.dt, Shape: []int64{-1}}}
	return loaders.Info{Format: m.dt.String(), Platform: "test", Inputs: spec, Outputs: spec}
}

func (m gateModel) Infer(ctx context.Context, in []*tensor.Tensor, _ []string) ([]*tensor.Tensor, error) {
	select {
	case <-m.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return in, nil
}

func (gateModel) Close() error { return nil }

// gateLoader loads its gateModel, under the format named by its datatype.
type gateLoader struct{ m gateModel }

func (l gateLoader) Format() string { return l.m.dt.String() }
func (gateLoader) Available() error { return nil }
func (l gateLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return l.m, nil
}

// The bytes a request holds in flight are what it decodes to, not only
// what it takes on the wire: typed contents take up to 8 bytes per element
// decoded (and as many again as the tensor) for 1 on the wire, and a raw
// BYTES element a 24-byte slice header for its 4-byte length. An INT64
// tensor of zeros in int64_contents, 1 MiB encoded, held 16 MiB: the bound
// of limits.max_inflight_bytes let sixteen times as much memory be held
// as it says.
func TestInflightBoundCountsDecodedContents(t *testing.T) {
	ids := gateModel{gate: make(chan struct{}), dt: tensor.Int64}
	strs := gateModel{gate: make(chan struct{}), dt: tensor.Bytes}
	models := deploy.NewManager(deploy.Config{}, loaders.NewRegistry(gateLoader{ids}, gateLoader{strs}), nil, nil, quietLog())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range []gateModel{ids, strs} {
		name := m.dt.String()
		spec := deploy.Spec{Name: name, Format: name, Model: artifact.Artifact{URI: "file:///" + name},
			Batching: engine.Config{Instances: 1, QueueCapacity: 8}}
		if _, err := models.Assign(name, spec, deploy.OwnerOperator); err != nil {
			t.Fatal(err)
		}
		if st, err := models.WaitFor(ctx, name, deploy.Settled); err != nil || !st.State.Serving() {
			t.Fatalf("deploy %s: %v %v", name, err, st.State)
		}
	}
	inf := NewInference(models).LimitInflight(8 << 20)
	_, conn, _ := startServer(t, testConfig(t), Services{Inference: inf})
	client := inference.NewGRPCInferenceServiceClient(conn)

	const n = 1 << 20
	input := func(dt string, elems int64) []*inference.ModelInferRequest_InferInputTensor {
		return []*inference.ModelInferRequest_InferInputTensor{{Name: "in", Datatype: dt, Shape: []int64{elems}}}
	}
	typed := &inference.ModelInferRequest{ModelName: "INT64", Inputs: input("INT64", n)}
	typed.Inputs[0].Contents = &inference.InferTensorContents{Int64Contents: make([]int64, n)}
	for _, c := range []struct {
		name string
		m    gateModel
		req  *inference.ModelInferRequest
		want int64 // at least, in flight
	}{
		// 1 MiB encoded, 8 MiB as []int64 and 8 MiB as the tensor.
		{"int64_contents", ids, typed, 2 * 8 * n},
		// 1 MiB encoded, n/4 empty elements of 24 bytes each split.
		{"raw BYTES", strs, &inference.ModelInferRequest{ModelName: "BYTES", Inputs: input("BYTES", n/4),
			RawInputContents: [][]byte{make([]byte, n)}}, 24 * n / 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, _ := models.Model(c.m.dt.String(), "")
			before := d.Status().Stats.Requests
			held := make(chan error, 1)
			go func() { _, err := client.ModelInfer(ctx, c.req); held <- err }()
			waitFor(t, func() bool { return d.Status().Stats.Requests == before+1 })
			if got := inf.inflight.Load(); got < c.want {
				t.Errorf("the request counts %d bytes in flight, want at least %d", got, c.want)
			}
			// Refused at once; admitted, it would wait in the queue.
			sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
			defer scancel()
			_, err := client.ModelInfer(sctx, c.req)
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "limits.max_inflight_bytes") {
				t.Errorf("a second request while the first holds over %d MiB decoded, past a bound of 8 MiB: %v, want ResourceExhausted", c.want>>20, err)
			}
			c.m.gate <- struct{}{}
			if err := <-held; err != nil {
				t.Fatal(err)
			}
			if got := inf.inflight.Load(); got != 0 {
				t.Fatalf("%d bytes left in flight", got)
			}
		})
	}
	// Raw numeric contents alias the request's buffer: counted as encoded.
	raw := &inference.ModelInferRequest{ModelName: "INT64", Inputs: input("INT64", n/8),
		RawInputContents: [][]byte{make([]byte, n)}}
	d, _ := models.Model("INT64", "")
	before := d.Status().Stats.Requests
	held := make(chan error, 1)
	go func() { _, err := client.ModelInfer(ctx, raw); held <- err }()
	waitFor(t, func() bool { return d.Status().Stats.Requests == before+1 })
	if got := inf.inflight.Load(); got > n+1024 {
		t.Errorf("a raw request of %d bytes counts %d in flight", n, got)
	}
	ids.gate <- struct{}{}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}
