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
