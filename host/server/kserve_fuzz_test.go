package server

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/cyxwiz/cyxwiz-node/host/config"
	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

// fuzzNode is a node serving real ONNX models (batched and not, several
// datatypes, BYTES) and a null model over a real socket, with a client
// that sends request bytes as they are.
type fuzzNode struct {
	inf    *Inference
	models *deploy.Manager
	conn   *grpc.ClientConn
}

// fuzzModels are the deployments of a fuzzNode: name and ONNX file ("" is
// the null model), batch size.
var fuzzModels = []struct {
	name, file string
	batch      int
}{
	{"linear", "linear.onnx", 8},
	{"linear1", "linear.onnx", 1},
	{"multi", "multi_io.onnx", 4},
	{"i64", "int64.onnx", 1},
	{"f16", "identity_float16.onnx", 4},
	{"bf16", "identity_bfloat16.onnx", 1},
	{"str", "identity_string.onnx", 4},
	{"bool", "identity_bool.onnx", 1},
	{"u8", "identity_uint8.onnx", 4},
	{"null", "", 8},
}

func newFuzzNode(tb testing.TB) *fuzzNode {
	tb.Helper()
	lib := loadertest.NativeLib(tb, "onnxruntime/libonnxruntime.so.1")
	dir := tb.TempDir()
	if err := onnxtest.WriteAll(dir); err != nil {
		tb.Fatal(err)
	}
	reg := loaders.NewRegistry(onnx.New(onnx.Config{LibraryPath: lib}), nullLoader{})
	models := deploy.NewManager(deploy.Config{}, reg, nil, nil, quietLog())
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		models.Close(ctx)
	})
	for _, m := range fuzzModels {
		spec := onnxSpec(m.name, "file://"+filepath.Join(dir, m.file), m.batch)
		spec.Batching.MaxQueueDelay = time.Millisecond
		if m.file == "" {
			spec.Format, spec.Model.URI = "null", "file:///null"
		}
		if _, err := models.Assign(m.name, spec, deploy.OwnerOperator); err != nil {
			tb.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		st, err := models.WaitFor(ctx, m.name, deploy.Settled)
		cancel()
		if err != nil || !st.State.Serving() {
			tb.Fatalf("deploy %s: %v %v %s", m.name, err, st.State, st.Message)
		}
	}
	inf := NewInference(models).LimitInflight(1 << 30)
	cfg, err := config.Parse("[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"\"\n", tb.TempDir(), "test.toml")
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := New(cfg, Services{Inference: inf}, quietLog())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
	})
	return &fuzzNode{inf: inf, models: models, conn: conn}
}

// infer sends wire as a ModelInferRequest.
func (n *fuzzNode) infer(ctx context.Context, wire []byte) (*inference.ModelInferResponse, error) {
	resp := new(inference.ModelInferResponse)
	err := n.conn.Invoke(ctx, inference.GRPCInferenceService_ModelInfer_FullMethodName, &wire, resp,
		grpc.ForceCodecV2(preEncoded{}))
	return resp, err
}

// fuzzSeeds are valid requests to every fuzz model, and near misses.
func fuzzSeeds() []*inference.ModelInferRequest {
	in := func(name, dt string, shape ...int64) *inference.ModelInferRequest_InferInputTensor {
		return &inference.ModelInferRequest_InferInputTensor{Name: name, Datatype: dt, Shape: shape}
	}
	out := func(names ...string) (o []*inference.ModelInferRequest_InferRequestedOutputTensor) {
		for _, n := range names {
			o = append(o, &inference.ModelInferRequest_InferRequestedOutputTensor{Name: n})
		}
		return o
	}
	str := func(elems ...string) []byte {
		var b []byte
		for _, e := range elems {
			b = append(b, byte(len(e)), 0, 0, 0)
			b = append(b, e...)
		}
		return b
	}
	typedX := in("X", "FP32", 1, 3)
	typedX.Contents = &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3}}
	typedS := in("x", "BYTES", 1, 4)
	typedS.Contents = &inference.InferTensorContents{BytesContents: [][]byte{{}, {}, []byte("x"), {}}}
	typedB := in("x", "BOOL", 2, 4)
	typedB.Contents = &inference.InferTensorContents{BoolContents: make([]bool, 8)}
	typedI := in("ids", "INT64", 1, 3)
	typedI.Contents = &inference.InferTensorContents{Int64Contents: []int64{1, -1, 1 << 62}}
	params := map[string]*inference.InferParameter{"binary_data": {ParameterChoice: &inference.InferParameter_BoolParam{BoolParam: true}}}
	return []*inference.ModelInferRequest{
		{ModelName: "linear", Id: "a", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("X", "FP32", 2, 3)},
			RawInputContents: [][]byte{f32raw(1, 2, 3, 4, 5, 6)}, Outputs: out("Y"), Parameters: params},
		{ModelName: "linear1", ModelVersion: "1", Inputs: []*inference.ModelInferRequest_InferInputTensor{typedX}},
		{ModelName: "linear", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("X", "FP32", 0, 3)}, RawInputContents: [][]byte{{}}},
		{ModelName: "multi", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("A", "FP32", 1, 4), in("B", "FP32", 1, 4)},
			RawInputContents: [][]byte{f32raw(1, 2, 3, 4), f32raw(1, 2, 3, 4)}, Outputs: out("prod", "sum")},
		{ModelName: "multi", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("A", "FP32", 1, 4), in("B", "FP32", 1, 4)},
			RawInputContents: [][]byte{f32raw(1, 2, 3, 4), f32raw(1, 2, 3, 4)}, Outputs: out("prod", "prod")},
		{ModelName: "i64", Inputs: []*inference.ModelInferRequest_InferInputTensor{typedI}},
		{ModelName: "f16", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("x", "FP16", 1, 4)}, RawInputContents: [][]byte{make([]byte, 8)}},
		{ModelName: "bf16", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("x", "BF16", 2, 4)}, RawInputContents: [][]byte{make([]byte, 16)}},
		{ModelName: "str", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("x", "BYTES", 1, 4)}, RawInputContents: [][]byte{str("", "a", "", "bc")}},
		{ModelName: "str", Inputs: []*inference.ModelInferRequest_InferInputTensor{typedS}},
		{ModelName: "bool", Inputs: []*inference.ModelInferRequest_InferInputTensor{typedB}},
		{ModelName: "u8", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("x", "UINT8", 3, 4)}, RawInputContents: [][]byte{make([]byte, 12)}},
		{ModelName: "null", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("x", "FP32", 1, 3, 48, 192)}, RawInputContents: [][]byte{make([]byte, 4*3*48*192)}},
		{ModelName: "null", Inputs: []*inference.ModelInferRequest_InferInputTensor{in("x", "FP32", 0, 3, 48, 192)}, RawInputContents: [][]byte{{}}},
	}
}

// clientMistake reports whether code is one a request may get: never
// Internal or Unknown (the node's own failure), never Unavailable (the
// connection or the model gone).
func clientMistake(code codes.Code) bool {
	switch code {
	case codes.OK, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.ResourceExhausted, codes.OutOfRange:
		return true
	}
	return false
}

// checkRequest sends wire (aimed at model by a model_name field appended
// to it: the last one wins) and checks the answer's code, then that the
// node still answers a valid request and holds no request bytes.
func (n *fuzzNode) checkRequest(t *testing.T, model uint8, wire []byte) {
	t.Helper()
	if len(wire) > 1<<20 {
		return
	}
	name := fuzzModels[int(model)%len(fuzzModels)].name
	wire = protowire.AppendTag(wire[:len(wire):len(wire)], 1, protowire.BytesType)
	wire = protowire.AppendString(wire, name)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := n.infer(ctx, wire)
	if !clientMistake(status.Code(err)) {
		t.Fatalf("request %x to %s: %v", wire, name, err)
	}
	if err == nil {
		var req inference.ModelInferRequest
		if perr := proto.Unmarshal(wire, &req); perr != nil {
			t.Fatalf("request %x answered OK but does not decode: %v", wire, perr)
		}
		if resp.Id != req.Id || resp.ModelName != req.ModelName {
			t.Fatalf("response id %q model %q, want %q %q", resp.Id, resp.ModelName, req.Id, req.ModelName)
		}
		if len(req.Outputs) > 0 && len(resp.Outputs) != len(req.Outputs) {
			t.Fatalf("%d outputs requested, %d answered", len(req.Outputs), len(resp.Outputs))
		}
		if len(resp.RawOutputContents) > 0 && len(resp.RawOutputContents) != len(resp.Outputs) {
			t.Fatalf("%d raw output contents for %d outputs", len(resp.RawOutputContents), len(resp.Outputs))
		}
		for i, o := range resp.Outputs {
			if i < len(req.Outputs) && o.Name != req.Outputs[i].Name {
				t.Fatalf("output %d is %q, requested %q", i, o.Name, req.Outputs[i].Name)
			}
			dt, err := tensor.ParseDType(o.Datatype)
			want := tensor.NumElements(o.Shape)
			if err != nil || want < 0 {
				t.Fatalf("output %q: datatype %q shape %v", o.Name, o.Datatype, o.Shape)
			}
			var got int64
			switch {
			case len(resp.RawOutputContents) == 0:
				c := o.Contents
				if c == nil {
					c = &inference.InferTensorContents{}
				}
				names, m := contentsFields(c)
				if len(names) > 1 || (m > 0 && names[0] != contentsFieldFor(dt)) {
					t.Fatalf("output %q of %v in %v", o.Name, dt, names)
				}
				got = int64(m)
			case dt == tensor.Bytes:
				s, err := tensor.SplitStrings(resp.RawOutputContents[i], want)
				if err != nil {
					t.Fatalf("output %q: %v", o.Name, err)
				}
				got = int64(len(s))
			default:
				got = int64(len(resp.RawOutputContents[i]) / dt.Size())
				if len(resp.RawOutputContents[i])%dt.Size() != 0 {
					got = -1
				}
			}
			if got != want {
				t.Fatalf("output %q %v %v holds %d elements", o.Name, dt, o.Shape, got)
			}
		}
	}
	valid, _ := proto.Marshal(fuzzSeeds()[0])
	if _, err := n.infer(ctx, valid); err != nil {
		t.Fatalf("after request %x to %s: valid request: %v", wire, name, err)
	}
	if held := n.inf.inflight.Load(); held != 0 {
		t.Fatalf("after request %x: %d bytes still held in flight", wire, held)
	}
}

// FuzzModelInferOverGRPC sends arbitrary ModelInferRequest bytes to real
// models over a real socket: a client's mistake is never INTERNAL, UNKNOWN
// or UNAVAILABLE, and the node serves a valid request afterwards.
func FuzzModelInferOverGRPC(f *testing.F) {
	for i, req := range fuzzSeeds() {
		wire, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		for j, m := range fuzzModels {
			if m.name == req.ModelName {
				f.Add(uint8(j), wire)
			}
		}
		f.Add(uint8(i), wire)
	}
	n := newFuzzNode(f)
	f.Fuzz(func(t *testing.T, model uint8, wire []byte) { n.checkRequest(t, model, wire) })
}

// TestModelInferMutations runs structured mutations of the seeds (shapes,
// datatypes, raw and typed contents, requested outputs, huge counts)
// through checkRequest, every run: the fuzzer reaches them only by chance.
func TestModelInferMutations(t *testing.T) {
	n := newFuzzNode(t)
	dtypes := []string{"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES", "", "fp32", "STRING"}
	shapes := [][]int64{nil, {}, {0}, {1}, {1, 4}, {0, 4}, {2, 3}, {1, 3, 48, 192}, {-1, 3}, {1 << 40, 0}, {1 << 31, 1 << 31, 4}, {1 << 20, 4}}
	mutate := []func(r *inference.ModelInferRequest){
		func(r *inference.ModelInferRequest) { r.RawInputContents = nil },
		func(r *inference.ModelInferRequest) { r.RawInputContents = append(r.RawInputContents, []byte{1}) },
		func(r *inference.ModelInferRequest) {
			r.Outputs = append(r.Outputs, &inference.ModelInferRequest_InferRequestedOutputTensor{Name: "nope"})
		},
		func(r *inference.ModelInferRequest) {
			r.Outputs = append(r.Outputs, &inference.ModelInferRequest_InferRequestedOutputTensor{Name: ""})
		},
		func(r *inference.ModelInferRequest) { r.Inputs = append(r.Inputs, r.Inputs...) },
		func(r *inference.ModelInferRequest) { r.Inputs = nil },
		func(r *inference.ModelInferRequest) {
			for _, in := range r.Inputs {
				in.Contents = &inference.InferTensorContents{}
			}
		},
		func(r *inference.ModelInferRequest) {
			for i := range r.RawInputContents {
				r.RawInputContents[i] = []byte{0xff, 0xff, 0xff, 0xff}
			}
		},
	}
	for si, seed := range fuzzSeeds() {
		model := -1
		for j, m := range fuzzModels {
			if m.name == seed.ModelName {
				model = j
			}
		}
		wire, _ := proto.Marshal(seed)
		_, err := n.infer(context.Background(), wire)
		dup := len(seed.Outputs) == 2 && seed.Outputs[0].Name == seed.Outputs[1].Name
		if (err == nil) == dup {
			t.Fatalf("seed %d (%v): %v", si, seed, err)
		}
		var variants []func(r *inference.ModelInferRequest)
		for _, dt := range dtypes {
			variants = append(variants, func(r *inference.ModelInferRequest) {
				for _, in := range r.Inputs {
					in.Datatype = dt
				}
			})
		}
		for _, shape := range shapes {
			variants = append(variants, func(r *inference.ModelInferRequest) {
				for _, in := range r.Inputs {
					in.Shape = shape
				}
			})
		}
		for i, v := range append(variants, mutate...) {
			r := proto.Clone(seed).(*inference.ModelInferRequest)
			v(r)
			wire, err := proto.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			t.Run(fmt.Sprintf("seed%d/%d", si, i), func(t *testing.T) { n.checkRequest(t, uint8(model), wire) })
		}
	}
}
