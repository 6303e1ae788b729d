// Command kept is a preprocess guest for the SDK's tests: it keeps tensors
// from one call to the next, as guests keep constants and state. The
// "mode" config value chooses what it does:
//
//   - "const": y = x + a constant built once (a guest tensor);
//   - "input": y = x + the first call's x (kept as a guest's copy);
//   - "result": the first call returns x + 1 and keeps it, without pinning;
//     later calls return that kept host tensor;
//   - "nil": returns a nil tensor;
//   - "infer": runs the model on relu(x) under two names, "a" and "b";
//   - "longname": returns x under a name of 70,000 bytes;
//   - "rank17": returns a guest tensor of rank 17;
//   - "badsize", "badbytes", "baddtype": returns a guest tensor whose
//     elements do not match its shape, or of no datatype;
//   - "axis": returns softmax(x) along axis 1<<32 - 1.
package main

import (
	"errors"
	"strings"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() { sdk.Register(sdk.Handlers{Preprocess: pre}) }

func main() {}

var (
	bias  = sdk.Float32s("bias", []int64{2}, []float32{10, 20})
	first *sdk.Tensor
)

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if len(in) != 1 {
		return nil, errors.New("want one input")
	}
	mode, _ := sdk.Config("mode")
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
