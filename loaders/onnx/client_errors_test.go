package onnx

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// An FP16 output is allocated before the run, sized from the first input
// dimension with its dim_param. Inputs that the model declares alike ([N, 4]
// and [N, 4]) but that the request gave different sizes (1 and 3, which
// ORT broadcasts) failed the run on ORT's check of that buffer, answered as
// an internal error; the other order ran. Both are the request's fault.
func TestNamedDimsDisagree(t *testing.T) {
	d := []rvDim{{value: -1, param: "N"}, {value: 4}}
	m, err := rvLoad(t, rvModel([][]byte{rvNode("Add", []string{"a", "b"}, []string{"y"})}, nil,
		[][]byte{rvValueInfo("a", elemFloat16, d), rvValueInfo("b", elemFloat16, d)},
		[][]byte{rvValueInfo("y", elemFloat16, d)}))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, rows := range [][2]int64{{1, 3}, {3, 1}} {
		a, b := tensor.New("a", tensor.FP16, rows[0], 4), tensor.New("b", tensor.FP16, rows[1], 4)
		_, err := m.Infer(context.Background(), []*tensor.Tensor{a, b}, nil)
		if !errors.Is(err, loaders.ErrInvalidInput) || !strings.Contains(err.Error(), `input "a"`) || !strings.Contains(err.Error(), `input "b"`) {
			t.Errorf("a %v, b %v: error %v, want ErrInvalidInput naming both inputs", a.Shape, b.Shape, err)
		}
	}
	a, b := tensor.New("a", tensor.FP16, 2, 4), tensor.New("b", tensor.FP16, 2, 4)
	a.Data[1], b.Data[1] = 0x3c, 0x3c // 1 + 1
	got, err := m.Infer(context.Background(), []*tensor.Tensor{a, b}, nil)
	if err != nil {
		t.Fatalf("Infer: %v", err)
	}
	if len(got) != 1 || got[0].Data[1] != 0x40 || len(got[0].Data) != 16 {
		t.Errorf("y = %+v, want 2 in the first element of a [2 4]", got)
	}
}

// A token id past an embedding table (Gather), or any index out of range
// in the other gather and scatter kernels, is the request's fault: it was
// an internal error.
func TestIndexOutOfRange(t *testing.T) {
	table := make([]byte, 4*2*4) // FP32 [4, 2]
	ids2 := []rvDim{{value: -1, param: "n"}, {value: 2}}
	cases := []struct {
		name  string
		model []byte
		ids   []int64
		shape []int64
	}{
		{"Gather", rvModel([][]byte{rvNode("Gather", []string{"emb", "ids"}, []string{"y"})},
			[][]byte{rvTensor("emb", elemFloat, []int64{4, 2}, table)},
			[][]byte{rvValueInfo("ids", elemInt64, []rvDim{{value: -1, param: "n"}})},
			[][]byte{rvValueInfo("y", elemFloat, ids2)}), []int64{1, 4}, []int64{2}},
		{"GatherElements", rvModel([][]byte{rvNode("GatherElements", []string{"emb", "ids"}, []string{"y"})},
			[][]byte{rvTensor("emb", elemFloat, []int64{4, 2}, table)},
			[][]byte{rvValueInfo("ids", elemInt64, ids2)},
			[][]byte{rvValueInfo("y", elemFloat, ids2)}), []int64{9, 0}, []int64{1, 2}},
		{"GatherND", rvModel([][]byte{rvNode("GatherND", []string{"emb", "ids"}, []string{"y"})},
			[][]byte{rvTensor("emb", elemFloat, []int64{4, 2}, table)},
			[][]byte{rvValueInfo("ids", elemInt64, ids2)},
			[][]byte{rvValueInfo("y", elemFloat, []rvDim{{value: -1, param: "n"}})}), []int64{9, 0}, []int64{1, 2}},
		{"ScatterND", rvModel([][]byte{rvNode("ScatterND", []string{"emb", "ids", "upd"}, []string{"y"})},
			[][]byte{rvTensor("emb", elemFloat, []int64{4, 2}, table), rvTensor("upd", elemFloat, []int64{1, 2}, table[:8])},
			[][]byte{rvValueInfo("ids", elemInt64, []rvDim{{value: 1}, {value: 1}})},
			[][]byte{rvValueInfo("y", elemFloat, []rvDim{{value: 4}, {value: 2}})}), []int64{9}, []int64{1, 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := rvLoad(t, c.model)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			ids := tensor.FromSlice("ids", tensor.Int64, c.shape, c.ids)
			_, err = m.Infer(context.Background(), []*tensor.Tensor{ids}, nil)
			if !errors.Is(err, loaders.ErrInvalidInput) {
				t.Fatalf("ids %v: error %v, want ErrInvalidInput", c.ids, err)
			}
			// In range, it runs.
			clear(ids.Data)
			if _, err := m.Infer(context.Background(), []*tensor.Tensor{ids}, nil); err != nil {
				t.Fatalf("ids of 0: %v", err)
			}
		})
	}
}

// A request whose dynamic dimensions do not fit the model's weights is the
// request's fault too: the kernels' shape checks said so, and the client
// got an internal error.
func TestKernelShapeMismatchIsInvalidInput(t *testing.T) {
	f32 := func(n int) []byte { return make([]byte, 4*n) }
	dyn := func(rank int) []rvDim {
		d := make([]rvDim, rank)
		for i := range d {
			d[i] = rvDim{value: -1, param: string(rune('a' + i))}
		}
		return d
	}
	out := func(rank int) [][]byte {
		d := dyn(rank)
		for i := range d {
			d[i].param = "o" + d[i].param
		}
		return [][]byte{rvValueInfo("y", elemFloat, d)}
	}
	cases := []struct {
		name      string
		model     []byte
		bad, good []int64
	}{
		{"MatMul", rvModel([][]byte{rvNode("MatMul", []string{"x", "w"}, []string{"y"})},
			[][]byte{rvTensor("w", elemFloat, []int64{3, 2}, f32(6))},
			[][]byte{rvValueInfo("x", elemFloat, dyn(2))}, out(2)), []int64{1, 4}, []int64{1, 3}},
		{"Concat", rvModel([][]byte{rvNode("Concat", []string{"x", "c"}, []string{"y"}, rvAttrInt("axis", 0))},
			[][]byte{rvTensor("c", elemFloat, []int64{1, 3}, f32(3))},
			[][]byte{rvValueInfo("x", elemFloat, dyn(2))}, out(2)), []int64{1, 4}, []int64{1, 3}},
		{"Conv", rvModel([][]byte{rvNode("Conv", []string{"x", "w"}, []string{"y"})},
			[][]byte{rvTensor("w", elemFloat, []int64{1, 2, 1, 1}, f32(2))},
			[][]byte{rvValueInfo("x", elemFloat, dyn(4))}, out(4)), []int64{1, 3, 2, 2}, []int64{1, 2, 2, 2}},
		{"Expand", rvModel([][]byte{rvNode("Expand", []string{"x", "s"}, []string{"y"})},
			[][]byte{rvTensor("s", elemInt64, []int64{2}, []byte{2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0})},
			[][]byte{rvValueInfo("x", elemFloat, dyn(2))}, out(2)), []int64{1, 4}, []int64{1, 3}},
		{"Add empty rows", rvModel([][]byte{rvNode("Add", []string{"x", "c"}, []string{"y"})},
			[][]byte{rvTensor("c", elemFloat, []int64{2, 3}, f32(6))},
			[][]byte{rvValueInfo("x", elemFloat, dyn(2))}, out(2)), []int64{0, 3}, []int64{2, 3}},
		{"TopK", rvModel([][]byte{rvNode("TopK", []string{"x", "k"}, []string{"y", "i"})},
			[][]byte{rvTensor("k", elemInt64, []int64{1}, []byte{2, 0, 0, 0, 0, 0, 0, 0})},
			[][]byte{rvValueInfo("x", elemFloat, dyn(2))},
			append(out(2), rvValueInfo("i", elemInt64, []rvDim{{value: -1, param: "oa"}, {value: -1, param: "ob"}}))),
			[]int64{1, 1}, []int64{1, 3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := rvLoad(t, c.model)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			_, err = m.Infer(context.Background(), []*tensor.Tensor{tensor.New("x", tensor.FP32, c.bad...)}, nil)
			if !errors.Is(err, loaders.ErrInvalidInput) {
				t.Fatalf("x %v: error %v, want ErrInvalidInput", c.bad, err)
			}
			if _, err := m.Infer(context.Background(), []*tensor.Tensor{tensor.New("x", tensor.FP32, c.good...)}, nil); err != nil {
				t.Fatalf("x %v: %v", c.good, err)
			}
		})
	}
}
