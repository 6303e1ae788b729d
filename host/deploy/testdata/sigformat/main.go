// Command sigformat is a guest for the deployment tests of declared
// signatures: one module in the format role and, as the deployment wishes,
// the preprocess and postprocess roles too. format_load takes the model
// file's length n; the signature, which needs the loaded model, declares
// input "x" FP32 [-1, n] and output "y" FP32 [-1, n]; format_infer
// returns its one input as y; preprocess renames x to m (the model's
// tensor, which the signature does not describe), postprocess passes its
// tensors on. With
// config "load_ms", format_load takes that long (spinning); with "sig" =
// "inputs" the signature declares x only; with "infer" = "first"
// format_infer returns the first row of x only, whatever its rows; with
// "infer" = "z" it returns its input as z, not the y it declares.
package main

import (
	"errors"
	"strconv"
	"time"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() {
	sdk.Register(sdk.Handlers{FormatLoad: load, FormatInfer: infer, Preprocess: rename, Postprocess: pass, Signature: signature})
}

func main() {}

var width int64 = -1

func load(model []byte) error {
	if v, ok := sdk.Config("load_ms"); ok {
		ms, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		for start := time.Now(); time.Since(start) < time.Duration(ms)*time.Millisecond; {
		}
	}
	width = int64(len(model))
	return nil
}

func infer(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if len(in) != 1 {
		return nil, errors.New("want one input")
	}
	mode, _ := sdk.Config("infer")
	if mode == "z" {
		return []*sdk.Tensor{in[0].Named("z")}, nil
	}
	if mode == "first" {
		v, err := in[0].Float32()
		if err != nil {
			return nil, err
		}
		return []*sdk.Tensor{sdk.Float32s("y", []int64{1, width}, v[:width])}, nil
	}
	return []*sdk.Tensor{in[0].Named("y")}, nil
}

func pass(in []*sdk.Tensor) ([]*sdk.Tensor, error) { return in, nil }

func rename(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	out := make([]*sdk.Tensor, len(in))
	for i, t := range in {
		out[i] = t
		if t.Name() == "x" {
			out[i] = t.Named("m")
		}
	}
	return out, nil
}

func signature() (sdk.Signature, error) {
	if width < 0 {
		return sdk.Signature{}, errors.New("no model loaded")
	}
	sig := sdk.Signature{
		Inputs:  []sdk.TensorMeta{{Name: "x", DType: sdk.FP32, Shape: []int64{-1, width}}},
		Outputs: []sdk.TensorMeta{{Name: "y", DType: sdk.FP32, Shape: []int64{-1, width}}},
	}
	if mode, _ := sdk.Config("sig"); mode == "inputs" {
		sig.Outputs = nil
	}
	return sig, nil
}
