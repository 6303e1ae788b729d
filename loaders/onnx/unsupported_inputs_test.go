package onnx

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Rank-0 BYTES/FP16/BF16 inputs and empty FP16/BF16 tensors, which
// onnxruntime_go cannot make, are refused as ErrInvalidInput (the server's
// InvalidArgument); they were plain errors, answered as Internal.
func TestUnsupportedInputsAreInvalidInput(t *testing.T) {
	cases := []struct {
		name  string
		model []byte
		in    *tensor.Tensor
	}{
		{"empty FP16 input", onnxtest.Identity(onnxtest.Float16, []int64{-1, 4}), tensor.New("x", tensor.FP16, 0, 4)},
		{"empty BF16 input", onnxtest.Identity(onnxtest.Bfloat16, []int64{-1, 4}), tensor.New("x", tensor.BF16, 0, 4)},
		{"rank-0 FP16 input, no declared shape", rvModel(
			[][]byte{rvNode("Cast", []string{"x"}, []string{"y"}, rvAttrInt("to", elemFloat))}, nil,
			[][]byte{rvValueInfo("x", elemFloat16, nil)},
			[][]byte{rvValueInfo("y", elemFloat, []rvDim{})}),
			&tensor.Tensor{Name: "x", DType: tensor.FP16, Shape: []int64{}, Data: []byte{0, 0x3c}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := rvLoad(t, c.model)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			_, err = m.Infer(context.Background(), []*tensor.Tensor{c.in}, nil)
			if err == nil {
				t.Fatal("Infer succeeded")
			}
			if !errors.Is(err, loaders.ErrInvalidInput) {
				t.Errorf("Infer error %q does not wrap ErrInvalidInput", err)
			}
		})
	}
}

// A graph input whose name holds a NUL loads (ORT's C API hands the name
// back cut at the NUL, and the session is created with the cut name), but
// every Infer then fails inside ORT with "Invalid input name", reported as
// the client's ErrInvalidInput. The model can never run: Load refuses it as
// ErrInvalidModel, naming the file and the value.
func TestNULInNameRefusedAtLoad(t *testing.T) {
	one := []rvDim{{value: 1}}
	for name, model := range map[string][]byte{
		"input": rvModel([][]byte{rvNode("Identity", []string{"a\x00b"}, []string{"y"})}, nil,
			[][]byte{rvValueInfo("a\x00b", elemFloat, one)}, [][]byte{rvValueInfo("y", elemFloat, one)}),
		"output": rvModel([][]byte{rvNode("Identity", []string{"x"}, []string{"y\x00z"})}, nil,
			[][]byte{rvValueInfo("x", elemFloat, one)}, [][]byte{rvValueInfo("y\x00z", elemFloat, one)}),
	} {
		t.Run(name, func(t *testing.T) {
			m, err := rvLoad(t, model)
			if err == nil {
				t.Fatalf("Load succeeded (model inputs %+v, outputs %+v), want ErrInvalidModel", m.Info().Inputs, m.Info().Outputs)
			}
			if !errors.Is(err, loaders.ErrInvalidModel) || !strings.Contains(err.Error(), "m.onnx") || !strings.Contains(err.Error(), "NUL") {
				t.Fatalf("Load error %v, want ErrInvalidModel naming the file and the NUL", err)
			}
		})
	}
}
