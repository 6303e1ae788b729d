// Command safetensors-mlp serves a custom model format from a guest: a
// two-layer perceptron stored as SafeTensors (fc1.weight [H, I], fc1.bias
// [H], fc2.weight [O, H], fc2.bias [O], PyTorch's Linear layout). FormatLoad
// parses the file in the guest (loaders/safetensors) and keeps the weights
// as pinned host tensors; FormatInfer computes
// y = relu(x·W1ᵀ + b1)·W2ᵀ + b2 for x FP32 [N, I] with host matmul, add and
// relu, and returns FP32 "y" [N, O]. Signature declares x and y with the
// loaded model's I and O.
package main

import (
	"errors"
	"fmt"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
	"github.com/cyxwiz/cyxwiz-node/loaders/safetensors"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

func init() { sdk.Register(sdk.Handlers{FormatLoad: load, FormatInfer: infer, Signature: signature}) }

func main() {}

var w1t, b1, w2t, b2 *sdk.Tensor

// inputs and outputs are the loaded model's widths I and O.
var inputs, outputs int64

// signature declares the tensors clients send and get: x FP32 [N, I] and
// y FP32 [N, O]. The node asks after load.
func signature() (sdk.Signature, error) {
	if w1t == nil {
		return sdk.Signature{}, errors.New("no model loaded")
	}
	return sdk.Signature{
		Inputs:  []sdk.TensorMeta{{Name: "x", DType: sdk.FP32, Shape: []int64{-1, inputs}}},
		Outputs: []sdk.TensorMeta{{Name: "y", DType: sdk.FP32, Shape: []int64{-1, outputs}}},
	}, nil
}

func weight(f *safetensors.File, name string, rank int) (*tensor.Tensor, error) {
	t, err := f.Tensor(name)
	if err != nil {
		return nil, err
	}
	if t.DType != tensor.FP32 || len(t.Shape) != rank {
		return nil, fmt.Errorf("%s: %v %v, want FP32 of rank %d", name, t.DType, t.Shape, rank)
	}
	return t, nil
}

func load(model []byte) error {
	f, err := safetensors.Parse(model)
	if err != nil {
		return err
	}
	var w1, fb1, w2, fb2 *tensor.Tensor
	for _, p := range []struct {
		dst  **tensor.Tensor
		name string
		rank int
	}{{&w1, "fc1.weight", 2}, {&fb1, "fc1.bias", 1}, {&w2, "fc2.weight", 2}, {&fb2, "fc2.bias", 1}} {
		if *p.dst, err = weight(f, p.name, p.rank); err != nil {
			return err
		}
	}
	// The layers must fit each other: a model that did not was loaded
	// (the deployment Ready) and then failed every request in the host's
	// matmul or add.
	hidden, out := w1.Shape[0], w2.Shape[0]
	if fb1.Shape[0] != hidden || w2.Shape[1] != hidden || fb2.Shape[0] != out {
		return fmt.Errorf("layers do not fit: fc1.weight %v, fc1.bias %v, fc2.weight %v, fc2.bias %v; want [H, I], [H], [O, H], [O]",
			w1.Shape, fb1.Shape, w2.Shape, fb2.Shape)
	}
	up := func(t *tensor.Tensor) *sdk.Tensor { return sdk.New(t.Name, sdk.FP32, t.Shape, t.Data) }
	b1, b2 = up(fb1), up(fb2)
	if w1t, err = sdk.Transpose(up(w1), 1, 0); err != nil {
		return err
	}
	if w2t, err = sdk.Transpose(up(w2), 1, 0); err != nil {
		return err
	}
	for _, t := range []*sdk.Tensor{w1t, b1, w2t, b2} {
		if err := t.Pin(); err != nil {
			return err
		}
	}
	inputs, outputs = w1.Shape[1], out
	sdk.Logf(sdk.LevelInfo, "mlp loaded: %v -> %v -> %v", w1.Shape[1], hidden, out)
	return nil
}

func infer(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if w1t == nil {
		return nil, errors.New("no model loaded")
	}
	if len(in) != 1 {
		return nil, errors.New(`want one FP32 input "x" [N, in]`)
	}
	h, err := sdk.MatMul(in[0], w1t)
	if err == nil {
		h, err = sdk.Add(h, b1)
	}
	if err == nil {
		h, err = sdk.Relu(h)
	}
	if err == nil {
		h, err = sdk.MatMul(h, w2t)
	}
	if err == nil {
		h, err = sdk.Add(h, b2)
	}
	if err != nil {
		return nil, err
	}
	return []*sdk.Tensor{h.Named("y")}, nil
}
