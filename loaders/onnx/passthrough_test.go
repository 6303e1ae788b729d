package onnx

import (
	"context"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// An FP16 output that is the graph input itself takes its size from that
// input even where the dimensions are anonymous; the model was refused
// ("dynamic dimension 0 not named after an input dimension"), and with named
// dimensions it returned zeros.
func TestPassThroughFP16AnonymousDims(t *testing.T) {
	anon := []rvDim{{value: -1}, {value: -1}}
	m, err := rvLoad(t, rvModel(nil, nil,
		[][]byte{rvValueInfo("x", elemFloat16, anon)},
		[][]byte{rvValueInfo("x", elemFloat16, anon)},
	))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, shape := range [][]int64{{1, 2}, {2, 3}} {
		in := tensor.New("x", tensor.FP16, shape...)
		for i := range in.Data {
			in.Data[i] = byte(i + 1)
		}
		got, err := m.Infer(context.Background(), []*tensor.Tensor{in}, nil)
		if err != nil {
			t.Fatalf("Infer %v: %v", shape, err)
		}
		if len(got) != 1 || !loadertest.Equal(got[0], in) {
			t.Errorf("shape %v: got %+v, want %+v", shape, got, in)
		}
	}
}
