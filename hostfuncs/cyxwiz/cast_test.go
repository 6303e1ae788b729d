package cyxwiz

import (
	"math"
	"reflect"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// cast gives every node the same answer, NumPy's where NumPy defines one:
// integers to integers wrap in two's complement (through float64, INT64
// lost precision past 2^53 and out-of-range values became whatever the
// CPU makes of an out-of-range float: INT_MIN on amd64); floats to
// integers truncate and saturate, NaN to 0 (Go leaves out-of-range
// conversions to the CPU); integers to FP32 round once.
func TestCastIsDeterministic(t *testing.T) {
	s := NewSession(Env{})
	cast := func(x *tensor.Tensor, dt tensor.DType) *tensor.Tensor {
		t.Helper()
		y, err := s.cast(x, dt)
		if err != nil {
			t.Fatal(err)
		}
		return y
	}
	u32 := tensor.FromSlice("u", tensor.Uint32, []int64{2}, []uint32{math.MaxUint32, 7})
	if got := tensor.View[int32](cast(u32, tensor.Int32)); !reflect.DeepEqual(got, []int32{-1, 7}) {
		t.Errorf("UINT32 → INT32 = %v, want [-1 7] (wrapped)", got)
	}
	i64 := tensor.FromSlice("i", tensor.Int64, []int64{3}, []int64{1<<32 + 5, 1<<53 + 1, -1})
	if got := tensor.View[int32](cast(i64, tensor.Int32)); !reflect.DeepEqual(got, []int32{5, 1, -1}) {
		t.Errorf("INT64 → INT32 = %v, want [5 1 -1]", got)
	}
	if got := tensor.View[int64](cast(i64, tensor.Int64)); !reflect.DeepEqual(got, []int64{1<<32 + 5, 1<<53 + 1, -1}) {
		t.Errorf("INT64 → INT64 = %v, want the values unchanged", got)
	}
	if got := tensor.View[uint64](cast(i64, tensor.Uint64)); got[2] != math.MaxUint64 || got[1] != 1<<53+1 {
		t.Errorf("INT64 → UINT64 = %v, want -1 as MaxUint64", got)
	}
	if got := cast(tensor.FromSlice("b", tensor.Int16, []int64{3}, []int16{0, 2, -3}), tensor.Bool).Data; !reflect.DeepEqual(got, []byte{0, 1, 1}) {
		t.Errorf("INT16 → BOOL = %v", got)
	}
	f := tensor.FromSlice("f", tensor.FP64, []int64{7}, []float64{math.NaN(), math.Inf(1), math.Inf(-1), 1e300, -1e300, -2.9, 2.9})
	if got := tensor.View[int32](cast(f, tensor.Int32)); !reflect.DeepEqual(got, []int32{0, math.MaxInt32, math.MinInt32, math.MaxInt32, math.MinInt32, -2, 2}) {
		t.Errorf("FP64 → INT32 = %v", got)
	}
	if got := tensor.View[uint64](cast(f, tensor.Uint64)); !reflect.DeepEqual(got, []uint64{0, math.MaxUint64, 0, math.MaxUint64, 0, 0, 2}) {
		t.Errorf("FP64 → UINT64 = %v", got)
	}
	if got := tensor.View[int64](cast(f, tensor.Int64)); !reflect.DeepEqual(got, []int64{0, math.MaxInt64, math.MinInt64, math.MaxInt64, math.MinInt64, -2, 2}) {
		t.Errorf("FP64 → INT64 = %v", got)
	}
	if got := cast(f, tensor.Uint8).Data; !reflect.DeepEqual(got, []byte{0, 255, 0, 255, 0, 0, 2}) {
		t.Errorf("FP64 → UINT8 = %v", got)
	}
	// 2^24+1 rounds to 2^24 in FP32 either way; 2^53+2^29+1 is where two
	// roundings (to float64, then float32) differ from one.
	big := tensor.FromSlice("n", tensor.Int64, []int64{2}, []int64{1<<24 + 1, 1<<53 + 1<<29 + 1})
	if got := tensor.View[float32](cast(big, tensor.FP32)); got[0] != 1<<24 || got[1] != float32(int64(1<<53+1<<29+1)) {
		t.Errorf("INT64 → FP32 = %v, want each rounded once", got)
	}
	ub := tensor.FromSlice("n", tensor.Uint64, []int64{1}, []uint64{math.MaxUint64})
	if got := tensor.View[float64](cast(ub, tensor.FP64)); got[0] != 1<<64 {
		t.Errorf("UINT64 max → FP64 = %v", got)
	}
}
