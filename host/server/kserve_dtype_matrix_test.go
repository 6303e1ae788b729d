package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/deploy"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

var matrixTypes = map[tensor.DType]onnxtest.ElemType{
	tensor.Bool: onnxtest.Bool, tensor.Uint8: onnxtest.Uint8, tensor.Uint16: onnxtest.Uint16,
	tensor.Uint32: onnxtest.Uint32, tensor.Uint64: onnxtest.Uint64, tensor.Int8: onnxtest.Int8,
	tensor.Int16: onnxtest.Int16, tensor.Int32: onnxtest.Int32, tensor.Int64: onnxtest.Int64,
	tensor.FP16: onnxtest.Float16, tensor.BF16: onnxtest.Bfloat16, tensor.FP32: onnxtest.Float,
	tensor.FP64: onnxtest.Double, tensor.Bytes: onnxtest.String,
}

// edgeValues are the elements of dt a codec is most likely to get wrong:
// NaN payloads, -0.0, subnormals, infinities, the extreme integers, both
// BOOL values, empty and non-UTF-8 strings. Fixed-width ones are raw
// little-endian bytes.
func edgeValues(dt tensor.DType) [][]byte {
	le := func(size int, vs ...uint64) [][]byte {
		var out [][]byte
		for _, v := range vs {
			b := make([]byte, 8)
			binary.LittleEndian.PutUint64(b, v)
			out = append(out, b[:size])
		}
		return out
	}
	switch dt {
	case tensor.Bool:
		return [][]byte{{0}, {1}}
	case tensor.Uint8, tensor.Int8:
		return le(1, 0, 1, 0x7f, 0x80, 0xff)
	case tensor.Uint16, tensor.Int16:
		return le(2, 0, 1, 0x7fff, 0x8000, 0xffff)
	case tensor.Uint32, tensor.Int32:
		return le(4, 0, 1, 0x7fffffff, 0x80000000, 0xffffffff)
	case tensor.Uint64, tensor.Int64:
		return le(8, 0, 1, 0x7fffffffffffffff, 0x8000000000000000, 0xffffffffffffffff)
	case tensor.FP16:
		// NaN with payload, -0, smallest subnormal, max, -inf, negative NaN
		return le(2, 0x7e01, 0x8000, 0x0001, 0x7bff, 0xfc00, 0xfe03)
	case tensor.BF16:
		return le(2, 0x7fc1, 0x8000, 0x0001, 0x7f7f, 0xff80, 0xffc3)
	case tensor.FP32:
		return le(4, 0x7fc00001, 0xffc12345, 0x80000000, 0x00000001, 0x7f7fffff, 0xff800000, 0x80000001)
	case tensor.FP64:
		return le(8, 0x7ff8000000000001, 0xfff8000000012345, 0x8000000000000000, 1, 0x7fefffffffffffff, 0xfff0000000000000)
	case tensor.Bytes:
		// No NUL: ONNX Runtime string tensors cannot hold one (refused
		// with InvalidArgument by the loader).
		return [][]byte{{}, []byte("é"), {0xff, 0xfe, 0x80}, []byte(strings.Repeat("x", 300))}
	}
	return nil
}

// matrixTensor fills a tensor of dt and shape with the edge values, cycled.
func matrixTensor(dt tensor.DType, shape []int64) *tensor.Tensor {
	t := tensor.New("x", dt, shape...)
	vals := edgeValues(dt)
	for i := range tensor.NumElements(shape) {
		v := vals[int(i)%len(vals)]
		if dt == tensor.Bytes {
			t.Strings[i] = v
		} else {
			copy(t.Data[int(i)*dt.Size():], v)
		}
	}
	return t
}

// Every KServe datatype, at every shape its model allows ([0,k], [1], [2,3],
// rank 0), goes through real ONNX Identity models over gRPC and comes back
// bit for bit: raw when sent raw, typed when sent typed (FP16 and BF16,
// which have no typed field, are refused typed with a pointer to
// raw_input_contents), with and without requested outputs, and with the
// binary_data parameters Triton clients send (ignored: gRPC has no JSON
// body to leave binary data out of).
func TestDTypeMatrixOverGRPC(t *testing.T) {
	dir := t.TempDir()
	ranks := map[string][]int64{"r2": {-1, -1}, "r1": {-1}, "r0": {}}
	var specs []deploy.Spec
	for dt, et := range matrixTypes {
		for r, shape := range ranks {
			if r == "r0" && (dt == tensor.FP16 || dt == tensor.BF16 || dt == tensor.Bytes) {
				// The ONNX loader refuses these models (onnxruntime_go
				// cannot make such tensors): loaders/onnx tests it.
				continue
			}
			file := filepath.Join(dir, fmt.Sprintf("id_%s_%s.onnx", et, r))
			if err := os.WriteFile(file, onnxtest.Identity(et, shape), 0o644); err != nil {
				t.Fatal(err)
			}
			specs = append(specs, onnxSpec(fmt.Sprintf("m-%s-%s", dt, r), file, 0))
		}
	}
	n := newTestNode(t, nil, specs...)
	yes := &inference.InferParameter{ParameterChoice: &inference.InferParameter_BoolParam{BoolParam: true}}
	shapes := []struct {
		model string
		shape []int64
	}{{"r2", []int64{0, 3}}, {"r2", []int64{2, 3}}, {"r2", []int64{3, 0}}, {"r1", []int64{1}}, {"r1", []int64{0}}, {"r0", []int64{}}}
	for dt := range matrixTypes {
		for _, sh := range shapes {
			if sh.model == "r0" && (dt == tensor.FP16 || dt == tensor.BF16 || dt == tensor.Bytes) {
				continue
			}
			for _, typed := range []bool{false, true} {
				for _, requested := range []int{0, 1, 2} { // none, "y", "y" with binary_data_output
					name := fmt.Sprintf("%v/%v/typed=%v/outputs=%d", dt, sh.shape, typed, requested)
					t.Run(name, func(t *testing.T) {
						in := matrixTensor(dt, sh.shape)
						req := &inference.ModelInferRequest{ModelName: fmt.Sprintf("m-%s-%s", dt, sh.model),
							Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: dt.String(), Shape: sh.shape}}}
						if typed {
							req.Inputs[0].Contents = toContents(in)
						} else {
							req.RawInputContents = [][]byte{toRaw(in)}
						}
						if requested > 0 {
							o := &inference.ModelInferRequest_InferRequestedOutputTensor{Name: "y"}
							if requested == 2 {
								o.Parameters = map[string]*inference.InferParameter{"binary_data_output": yes, "binary_data": yes}
								req.Inputs[0].Parameters = map[string]*inference.InferParameter{"binary_data_size": {
									ParameterChoice: &inference.InferParameter_Int64Param{Int64Param: int64(len(toRaw(in)))}}}
							}
							req.Outputs = append(req.Outputs, o)
						}
						resp, err := n.client.ModelInfer(context.Background(), req)
						if ortLimited(dt, sh.shape) && !(typed && (dt == tensor.FP16 || dt == tensor.BF16)) {
							// onnxruntime_go cannot build these tensors: a
							// loader limitation, refused with a clear error.
							if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "not supported by onnxruntime_go") {
								t.Fatalf("%v %v: %v, want InvalidArgument naming the limitation", dt, sh.shape, err)
							}
							return
						}
						if typed && (dt == tensor.FP16 || dt == tensor.BF16) {
							if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "raw_input_contents") {
								t.Fatalf("typed %v: %v, want InvalidArgument naming raw_input_contents", dt, err)
							}
							return
						}
						if err != nil {
							t.Fatal(err)
						}
						if len(resp.Outputs) != 1 || resp.Outputs[0].Name != "y" || resp.Outputs[0].Datatype != dt.String() ||
							fmt.Sprint(resp.Outputs[0].Shape) != fmt.Sprint(sh.shape) {
							t.Fatalf("outputs: %v", resp.Outputs)
						}
						out := &tensor.Tensor{Name: "y", DType: dt, Shape: resp.Outputs[0].Shape}
						if typed {
							if len(resp.RawOutputContents) != 0 || resp.Outputs[0].Contents == nil {
								t.Fatalf("typed request answered raw: %v", resp)
							}
							if err := fromContents(out, resp.Outputs[0].Contents, tensor.NumElements(out.Shape)); err != nil {
								t.Fatal(err)
							}
						} else {
							if len(resp.RawOutputContents) != 1 || resp.Outputs[0].Contents != nil {
								t.Fatalf("raw request answered typed: %v", resp)
							}
							if err := fromRaw(out, resp.RawOutputContents[0], tensor.NumElements(out.Shape)); err != nil {
								t.Fatal(err)
							}
						}
						if !bytes.Equal(toRaw(out), toRaw(in)) {
							t.Fatalf("got %x, want %x", toRaw(out), toRaw(in))
						}
					})
				}
			}
		}
	}
}

// ortLimited reports the tensors onnxruntime_go cannot pass to a session:
// empty or rank-0 FP16 and BF16, rank-0 BYTES.
func ortLimited(dt tensor.DType, shape []int64) bool {
	switch dt {
	case tensor.FP16, tensor.BF16:
		return len(shape) == 0 || tensor.NumElements(shape) == 0
	case tensor.Bytes:
		return len(shape) == 0
	}
	return false
}

// Every malformed tensor encoding, for every datatype, is InvalidArgument
// with a message that says what to send instead: typed contents whose count
// does not match the shape, data in another datatype's field, raw and typed
// both given, raw bytes that are not whole elements, BYTES whose length
// prefix is cut short.
func TestDTypeMatrixMalformedOverGRPC(t *testing.T) {
	var specs []deploy.Spec
	for dt, et := range matrixTypes {
		specs = append(specs, onnxSpec("id-"+dt.String(), "identity_"+et.String()+".onnx", 8))
	}
	n := newTestNode(t, nil, specs...)
	shape := []int64{2, 4}
	fields := map[string]*inference.InferTensorContents{
		"bool_contents":   {BoolContents: []bool{true}},
		"int_contents":    {IntContents: []int32{1}},
		"int64_contents":  {Int64Contents: []int64{1}},
		"uint_contents":   {UintContents: []uint32{1}},
		"uint64_contents": {Uint64Contents: []uint64{1}},
		"fp32_contents":   {Fp32Contents: []float32{1}},
		"fp64_contents":   {Fp64Contents: []float64{1}},
		"bytes_contents":  {BytesContents: [][]byte{{1}}},
	}
	type tc struct {
		name string
		in   *inference.ModelInferRequest_InferInputTensor
		raw  [][]byte
		msgs []string
	}
	for dt := range matrixTypes {
		in := matrixTensor(dt, shape)
		input := func(c *inference.InferTensorContents) *inference.ModelInferRequest_InferInputTensor {
			return &inference.ModelInferRequest_InferInputTensor{Name: "x", Datatype: dt.String(), Shape: shape, Contents: c}
		}
		want := contentsFieldFor(dt)
		noTyped := dt == tensor.FP16 || dt == tensor.BF16
		var cases []tc
		for f, c := range fields {
			if f == want {
				continue
			}
			msgs := []string{`input "x"`, "takes contents." + want, "got data in contents." + f}
			if noTyped {
				msgs = []string{`input "x"`, dt.String() + " has no typed contents field", "send it in raw_input_contents"}
			}
			cases = append(cases, tc{"field " + f, input(c), nil, msgs})
		}
		if !noTyped {
			short := toContents(in)
			long := toContents(in)
			switch want {
			case "bool_contents":
				short.BoolContents = short.BoolContents[1:]
				long.BoolContents = append(long.BoolContents, true)
			case "int_contents":
				short.IntContents = short.IntContents[1:]
				long.IntContents = append(long.IntContents, 1)
			case "int64_contents":
				short.Int64Contents = short.Int64Contents[1:]
				long.Int64Contents = append(long.Int64Contents, 1)
			case "uint_contents":
				short.UintContents = short.UintContents[1:]
				long.UintContents = append(long.UintContents, 1)
			case "uint64_contents":
				short.Uint64Contents = short.Uint64Contents[1:]
				long.Uint64Contents = append(long.Uint64Contents, 1)
			case "fp32_contents":
				short.Fp32Contents = short.Fp32Contents[1:]
				long.Fp32Contents = append(long.Fp32Contents, 1)
			case "fp64_contents":
				short.Fp64Contents = short.Fp64Contents[1:]
				long.Fp64Contents = append(long.Fp64Contents, 1)
			case "bytes_contents":
				short.BytesContents = short.BytesContents[1:]
				long.BytesContents = append(long.BytesContents, []byte("z"))
			}
			cases = append(cases,
				tc{"typed short", input(short), nil, []string{`input "x"`, "needs 8 elements, contents hold 7"}},
				tc{"typed long", input(long), nil, []string{`input "x"`, "needs 8 elements, contents hold 9"}},
				tc{"raw and typed", input(toContents(in)), [][]byte{toRaw(in)}, []string{`input "x"`, "both raw_input_contents and contents"}})
		}
		raw := toRaw(in)
		if dt == tensor.Bytes {
			cases = append(cases,
				tc{"prefix cut", input(nil), [][]byte{raw[:len(raw)-len(in.Strings[7])-2]}, []string{`input "x"`, "truncated in a length prefix"}},
				tc{"element cut", input(nil), [][]byte{raw[:len(raw)-1]}, []string{`input "x"`, "runs past the end"}},
				tc{"one prefix cut", &inference.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "BYTES", Shape: []int64{1, 1}},
					[][]byte{{3, 0, 0}}, []string{`input "x"`, "cannot fit in 3 bytes"}})
		} else {
			cases = append(cases,
				tc{"raw one byte short", input(nil), [][]byte{raw[:len(raw)-1]}, []string{`input "x"`, fmt.Sprintf("needs %d raw bytes, got %d", len(raw), len(raw)-1)}},
				tc{"raw one byte long", input(nil), [][]byte{append(raw, 0)}, []string{`input "x"`, fmt.Sprintf("needs %d raw bytes, got %d", len(raw), len(raw)+1)}})
		}
		for _, c := range cases {
			t.Run(dt.String()+"/"+c.name, func(t *testing.T) {
				_, err := n.client.ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: "id-" + dt.String(),
					Inputs: []*inference.ModelInferRequest_InferInputTensor{c.in}, RawInputContents: c.raw})
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("%v, want InvalidArgument", err)
				}
				for _, m := range c.msgs {
					if !strings.Contains(status.Convert(err).Message(), m) {
						t.Errorf("%q does not say %q", status.Convert(err).Message(), m)
					}
				}
			})
		}
	}
}

// Concurrent requests of every datatype, batched by the engine (empty ones
// among them), each come back with exactly their own elements.
func TestDTypeMatrixBatchedOverGRPC(t *testing.T) {
	dir := t.TempDir()
	var specs []deploy.Spec
	for dt, et := range matrixTypes {
		file := filepath.Join(dir, fmt.Sprintf("id_%s.onnx", et))
		if err := os.WriteFile(file, onnxtest.Identity(et, []int64{-1, -1}), 0o644); err != nil {
			t.Fatal(err)
		}
		specs = append(specs, onnxSpec("b-"+dt.String(), file, 64))
	}
	n := newTestNode(t, nil, specs...)
	var wg sync.WaitGroup
	errs := make(chan error, 1024)
	for dt := range matrixTypes {
		for i := range 24 {
			rows := int64(i % 4)
			if ortLimited(dt, []int64{rows, 3}) {
				rows = 1
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				in := matrixTensor(dt, []int64{rows, 3})
				// make each request's elements its own
				if dt == tensor.Bytes {
					for j := range in.Strings {
						in.Strings[j] = fmt.Appendf(nil, "%d-%d", i, j)
					}
				} else if len(in.Data) > 0 {
					in.Data[0] = byte(i) & 1
				}
				typed := i%2 == 1 && dt != tensor.FP16 && dt != tensor.BF16
				req := &inference.ModelInferRequest{ModelName: "b-" + dt.String(),
					Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: dt.String(), Shape: in.Shape}}}
				if typed {
					req.Inputs[0].Contents = toContents(in)
				} else {
					req.RawInputContents = [][]byte{toRaw(in)}
				}
				resp, err := n.client.ModelInfer(context.Background(), req)
				if err != nil {
					errs <- fmt.Errorf("%v %d: %w", dt, i, err)
					return
				}
				out := &tensor.Tensor{Name: "y", DType: dt, Shape: resp.Outputs[0].Shape}
				if typed {
					err = fromContents(out, resp.Outputs[0].Contents, tensor.NumElements(out.Shape))
				} else {
					err = fromRaw(out, resp.RawOutputContents[0], tensor.NumElements(out.Shape))
				}
				if err != nil || !bytes.Equal(toRaw(out), toRaw(in)) || fmt.Sprint(out.Shape) != fmt.Sprint(in.Shape) {
					errs <- fmt.Errorf("%v %d typed=%v: got %v %x (%v), want %v %x", dt, i, typed, out.Shape, toRaw(out), err, in.Shape, toRaw(in))
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
