package onnx

import (
	"context"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A model with no graph inputs (everything from initializers) or no graph
// outputs is refused at load: onnxruntime_go's Run indexes the first of each,
// so every Infer panicked.
func TestNoInputsOrNoOutputsRefused(t *testing.T) {
	cases := map[string][]byte{
		"no inputs": rvModel(
			[][]byte{rvNode("Identity", []string{"w"}, []string{"y"})},
			[][]byte{rvTensor("w", elemFloat, []int64{2}, make([]byte, 8))},
			nil,
			[][]byte{rvValueInfo("y", elemFloat, []rvDim{{value: 2}})},
		),
		"no outputs": rvModel(
			[][]byte{rvNode("Identity", []string{"x"}, []string{"y"})},
			nil,
			[][]byte{rvValueInfo("x", elemFloat, []rvDim{{value: 2}})},
			nil,
		),
	}
	for name, model := range cases {
		t.Run(name, func(t *testing.T) {
			m, err := rvLoad(t, model)
			if err != nil {
				t.Logf("Load refused it: %v", err)
				return
			}
			var ins []*tensor.Tensor
			for _, in := range m.Info().Inputs {
				ins = append(ins, tensor.New(in.Name, in.DType, in.Shape...))
			}
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("Load succeeded and Infer panicked: %v", p)
				}
			}()
			_, err = m.Infer(context.Background(), ins, nil)
			t.Logf("Infer: %v", err)
		})
	}
}
