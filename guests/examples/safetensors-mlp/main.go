// Command safetensors-mlp serves a custom model format from a guest: a
// two-layer perceptron stored as SafeTensors (fc1.weight [H, I], fc1.bias
// [H], fc2.weight [O, H], fc2.bias [O], PyTorch's Linear layout). FormatLoad
// parses the file in the guest (loaders/safetensors) and keeps the weights
// as pinned host tensors; FormatInfer computes
// y = relu(x·W1ᵀ + b1)·W2ᵀ + b2 for x FP32 [N, I] with host matmul, add and
// relu, and returns FP32 "y" [N, O].
package main

import (
	"errors"
	"fmt"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
	"github.com/cyxwiz/cyxwiz-node/loaders/safetensors"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

func init() { sdk.Register(sdk.Handlers{FormatLoad: load, FormatInfer: infer}) }

func main() {}

var w1t, b1, w2t, b2 *sdk.Tensor

func weight(f *safetensors.File, name string, rank int) (*sdk.Tensor, error) {
	t, err := f.Tensor(name)
	if err != nil {
		return nil, err
	}
	if t.DType != tensor.FP32 || len(t.Shape) != rank {
		return nil, fmt.Errorf("%s: %v %v, want FP32 of rank %d", name, t.DType, t.Shape, rank)
	}
	return sdk.New(name, sdk.FP32, t.Shape, t.Data), nil
}

func load(model []byte) error {
	f, err := safetensors.Parse(model)
	if err != nil {
		return err
	}
	var w1, w2 *sdk.Tensor
	for _, p := range []struct {
		dst  **sdk.Tensor
		name string
		rank int
	}{{&w1, "fc1.weight", 2}, {&b1, "fc1.bias", 1}, {&w2, "fc2.weight", 2}, {&b2, "fc2.bias", 1}} {
		if *p.dst, err = weight(f, p.name, p.rank); err != nil {
			return err
		}
	}
	if w1t, err = sdk.Transpose(w1, 1, 0); err != nil {
		return err
	}
	if w2t, err = sdk.Transpose(w2, 1, 0); err != nil {
		return err
	}
	for _, t := range []*sdk.Tensor{w1t, b1, w2t, b2} {
		if err := t.Pin(); err != nil {
			return err
		}
	}
	sdk.Logf(sdk.LevelInfo, "mlp loaded: %v -> %v -> %v", w1.Shape()[1], w1.Shape()[0], w2.Shape()[0])
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
