package loaders_test

import (
	"errors"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

func TestCheckTensor(t *testing.T) {
	x := tensor.FromSlice("x", tensor.FP32, []int64{2, 3}, make([]float32, 6))
	for _, tc := range []struct {
		name string
		spec loaders.TensorSpec
		t    *tensor.Tensor
		ok   bool
	}{
		{"dynamic", loaders.TensorSpec{Name: "x", DType: tensor.FP32, Shape: []int64{-1, 3}}, x, true},
		{"undeclared shape: any rank", loaders.TensorSpec{Name: "x", DType: tensor.FP32}, x, true},
		{"scalar wanted", loaders.TensorSpec{Name: "x", DType: tensor.FP32, Shape: []int64{}}, x, false},
		{"fixed dim", loaders.TensorSpec{Name: "x", DType: tensor.FP32, Shape: []int64{-1, 4}}, x, false},
		{"dtype", loaders.TensorSpec{Name: "x", DType: tensor.Int64}, x, false},
		{"undeclared shape, bad data", loaders.TensorSpec{Name: "x", DType: tensor.FP32},
			&tensor.Tensor{Name: "x", DType: tensor.FP32, Shape: []int64{4}, Data: make([]byte, 4)}, false},
	} {
		err := loaders.CheckTensor(tc.spec, tc.t)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, loaders.ErrInvalidInput)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
