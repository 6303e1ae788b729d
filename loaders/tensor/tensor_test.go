package tensor

import (
	"errors"
	"math"
	"testing"
)

func TestDTypeNamesRoundTrip(t *testing.T) {
	want := []string{"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"}
	got := DTypes()
	if len(got) != len(want) {
		t.Fatalf("%d dtypes, want %d", len(got), len(want))
	}
	for i, d := range got {
		if d.String() != want[i] {
			t.Errorf("%d: %s, want %s", i, d, want[i])
		}
		p, err := ParseDType(want[i])
		if err != nil || p != d {
			t.Errorf("ParseDType(%s) = %v, %v", want[i], p, err)
		}
	}
	if _, err := ParseDType("FLOAT"); err == nil {
		t.Error("ParseDType(FLOAT): no error")
	}
}

func TestValidate(t *testing.T) {
	ok := FromSlice("x", FP32, []int64{2, 2}, []float32{1, 2, 3, 4})
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if v := View[float32](ok); v[3] != 4 {
		t.Fatalf("View = %v", v)
	}
	for name, bad := range map[string]*Tensor{
		"short data":     {Name: "x", DType: FP32, Shape: []int64{2, 2}, Data: make([]byte, 12)},
		"negative dim":   {Name: "x", DType: FP32, Shape: []int64{-1, 2}, Data: make([]byte, 8)},
		"bytes count":    {Name: "x", DType: Bytes, Shape: []int64{3}, Strings: [][]byte{{1}}},
		"invalid dtype":  {Name: "x", DType: Invalid, Shape: []int64{1}},
		"overflow shape": {Name: "x", DType: Uint8, Shape: []int64{1 << 40, 1 << 40}},
		// Elements fit an int64, bytes do not: 2^62 × 4 wraps to 0 bytes.
		"overflow bytes":  {Name: "x", DType: FP32, Shape: []int64{1 << 62}},
		"overflow bytes2": {Name: "x", DType: FP64, Shape: []int64{1<<61 + 1}, Data: make([]byte, 8)},
		"new overflow":    New("x", FP64, 1<<61+1),
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		} else if name != "invalid dtype" && !errors.Is(err, ErrShape) {
			t.Errorf("%s: %v does not wrap ErrShape", name, err)
		}
	}
}

func TestSpan(t *testing.T) {
	for _, tc := range []struct {
		shape []int64
		want  int64
	}{
		{nil, 1},
		{[]int64{2, 3}, 6},
		{[]int64{2, 0, 3}, 6},
		{[]int64{1 << 62, 0}, 1 << 62},
		{[]int64{1 << 62, 4}, math.MaxInt64},
	} {
		if got := Span(tc.shape); got != tc.want {
			t.Errorf("Span(%v) = %d, want %d", tc.shape, got, tc.want)
		}
	}
}

// An empty shape holds 0 elements whatever the order of its dimensions:
// the product of the dimensions before a zero overflowed, so [2^62, 4, 0]
// was -1 (an invalid shape: Validate refused the tensor, Split and Concat
// too) while [0, 2^62, 4] was 0.
func TestNumElementsZeroAnywhere(t *testing.T) {
	for _, shape := range [][]int64{
		{0, 1 << 62, 4},
		{1 << 62, 0, 4},
		{1 << 62, 4, 0},
		{1 << 40, 1 << 40, 1 << 40, 0},
	} {
		if n := NumElements(shape); n != 0 {
			t.Errorf("NumElements(%v) = %d, want 0", shape, n)
		}
		x := New("x", FP32, shape...)
		if err := x.Validate(); err != nil {
			t.Errorf("%v: %v", shape, err)
		}
		if _, err := Split(x, []int64{shape[0]}); err != nil {
			t.Errorf("Split %v: %v", shape, err)
		}
		if _, err := Concat("y", []*Tensor{x, x}); err != nil && shape[0] == 0 {
			t.Errorf("Concat %v: %v", shape, err)
		}
	}
	// A negative dimension is refused wherever it stands, as an overflow
	// without a zero.
	for _, shape := range [][]int64{{0, -1}, {-1, 0}, {1 << 62, 4}, {1 << 40, 1 << 40}} {
		if n := NumElements(shape); n != -1 {
			t.Errorf("NumElements(%v) = %d, want -1", shape, n)
		}
	}
}
