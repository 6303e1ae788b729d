// Command kept is a preprocess guest for the SDK's tests: it keeps tensors
// from one call to the next, as guests keep constants and state. The
// "mode" config value chooses what it does (and what its batch policy
// decides, below):
//
//   - "const": y = x + a constant built once (a guest tensor);
//   - "input": y = x + the first call's x (kept as a guest's copy);
//   - "result": the first call returns x + 1 and keeps it, without pinning;
//     later calls return that kept host tensor;
//   - "nil": returns a nil tensor;
//   - "infer": runs the model on relu(x) under two names, "a" and "b";
//   - "longname": returns x under a name of 70,000 bytes;
//   - "rank17": returns a guest tensor of rank 17;
//   - "badname", "badnameinline": returns x (a host tensor), or a guest
//     tensor, under a name that is not UTF-8;
//   - "badsize", "badbytes", "baddtype": returns a guest tensor whose
//     elements do not match its shape, or of no datatype;
//   - "axis": returns softmax(x) along axis 1<<32 - 1;
//   - "echo": returns its inputs (any number);
//   - "copy": returns guest copies of its inputs' elements (inline);
//   - "upload": returns host copies of its inputs (uploaded guest copies,
//     reshaped to their shape);
//   - "hosterr": fails with the error of a softmax of its first input.
package main

import (
	"errors"
	"strings"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() { sdk.Register(sdk.Handlers{Preprocess: pre, BatchPolicy: policy}) }

// policy decides by mode: "runover" runs one request more than are
// queued, "negwait" waits -1 µs; otherwise it runs them all.
func policy(q sdk.QueueState) (sdk.Decision, error) {
	mode, _ := sdk.Config("mode")
	switch mode {
	case "runover":
		return sdk.Decision{Run: q.Queued + 1}, nil
	case "negwait":
		return sdk.Decision{Wait: -time.Microsecond}, nil
	}
	return sdk.Decision{Run: q.Queued}, nil
}

func main() {}

var (
	bias  = sdk.Float32s("bias", []int64{2}, []float32{10, 20})
	first *sdk.Tensor
)

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	mode, _ := sdk.Config("mode")
	switch mode {
	case "echo":
		return in, nil
	case "hosterr":
		_, err := sdk.Softmax(in[0], 5)
		return nil, err
	case "copy", "upload":
		out := make([]*sdk.Tensor, len(in))
		for i, x := range in {
			if x.DType() == sdk.Bytes {
				s, err := x.Strings()
				if err != nil {
					return nil, err
				}
				out[i] = sdk.Strings(x.Name(), x.Shape(), s)
			} else {
				b, err := x.Data()
				if err != nil {
					return nil, err
				}
				out[i] = sdk.New(x.Name(), x.DType(), x.Shape(), b)
			}
			if mode == "upload" {
				y, err := sdk.Reshape(out[i], x.Shape()...)
				if err != nil {
					return nil, err
				}
				out[i] = y.Named(x.Name())
			}
		}
		return out, nil
	}
	if len(in) != 1 {
		return nil, errors.New("want one input")
	}
	switch mode {
	case "const":
		y, err := sdk.Add(in[0], bias)
		if err != nil {
			return nil, err
		}
		return []*sdk.Tensor{y.Named("y")}, nil
	case "input":
		if first == nil {
			if _, err := in[0].Float32(); err != nil {
				return nil, err
			}
			first = in[0]
		}
		y, err := sdk.Add(in[0], first)
		if err != nil {
			return nil, err
		}
		return []*sdk.Tensor{y.Named("y")}, nil
	case "result":
		if first == nil {
			y, err := sdk.Affine(in[0], 1, 1)
			if err != nil {
				return nil, err
			}
			first = y.Named("y")
		}
		return []*sdk.Tensor{first}, nil
	case "nil":
		return []*sdk.Tensor{nil}, nil
	case "infer":
		y, err := sdk.Relu(in[0]) // a host tensor
		if err != nil {
			return nil, err
		}
		return sdk.Infer("", y.Named("a"), y.Named("b"))
	case "longname":
		return []*sdk.Tensor{in[0].Named(strings.Repeat("y", 70000))}, nil
	case "badname":
		return []*sdk.Tensor{in[0].Named("y\xff")}, nil
	case "badnameinline":
		return []*sdk.Tensor{sdk.Float32s("y\xc3", []int64{1}, []float32{1})}, nil
	case "rank17":
		shape := make([]int64, 17)
		for i := range shape {
			shape[i] = 1
		}
		return []*sdk.Tensor{sdk.New("y", sdk.Uint8, shape, []byte{7})}, nil
	case "badsize":
		return []*sdk.Tensor{sdk.Float32s("y", []int64{3}, []float32{1, 2})}, nil
	case "badbytes":
		return []*sdk.Tensor{sdk.Strings("y", []int64{2}, [][]byte{[]byte("a")})}, nil
	case "baddtype":
		return []*sdk.Tensor{sdk.New("y", 0, []int64{1}, []byte{1})}, nil
	case "axis":
		y, err := sdk.Softmax(in[0], 1<<32-1)
		if err != nil {
			return nil, err
		}
		return []*sdk.Tensor{y}, nil
	}
	return nil, errors.New("unknown mode")
}
