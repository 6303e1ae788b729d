package cyxwiz

import (
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

func ft(shape []int64, v ...float32) *tensor.Tensor {
	return tensor.FromSlice("t", tensor.FP32, shape, v)
}

func seq(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i)
	}
	return v
}

func near(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-5 {
			return false
		}
	}
	return true
}

func TestOps(t *testing.T) {
	s := NewSession(Env{})
	tests := []struct {
		name  string
		op    func() (*tensor.Tensor, error)
		shape []int64
		want  []float32
	}{
		{"affine", func() (*tensor.Tensor, error) { return s.affine(ft([]int64{3}, 1, 2, 3), 2, 1) }, []int64{3}, []float32{3, 5, 7}},
		{"normalize", func() (*tensor.Tensor, error) {
			return s.normalize(ft([]int64{2, 2}, 0, 255, 255, 0), 1.0/255, []float32{0.5, 0}, []float32{0.5, 1}, 0)
		}, []int64{2, 2}, []float32{-1, 1, 1, 0}},
		{"softmax", func() (*tensor.Tensor, error) { return s.softmax(ft([]int64{2, 2}, 0, 0, 0, float32(math.Log(3))), -1) },
			[]int64{2, 2}, []float32{0.5, 0.5, 0.25, 0.75}},
		{"softmax axis 0", func() (*tensor.Tensor, error) { return s.softmax(ft([]int64{2, 1}, 0, 0), 0) }, []int64{2, 1}, []float32{0.5, 0.5}},
		{"matmul", func() (*tensor.Tensor, error) {
			return s.matmul(ft([]int64{2, 2}, 1, 2, 3, 4), ft([]int64{2, 1}, 1, 1))
		}, []int64{2, 1}, []float32{3, 7}},
		{"add broadcast", func() (*tensor.Tensor, error) { return s.add(ft([]int64{2, 2}, 1, 2, 3, 4), ft([]int64{2}, 10, 20)) }, []int64{2, 2}, []float32{11, 22, 13, 24}},
		{"relu", func() (*tensor.Tensor, error) { return s.relu(ft([]int64{3}, -1, 0, 2)) }, []int64{3}, []float32{0, 0, 2}},
		{"transpose 2d", func() (*tensor.Tensor, error) { return s.transpose(ft([]int64{2, 3}, seq(6)...), []int{1, 0}) }, []int64{3, 2}, []float32{0, 3, 1, 4, 2, 5}},
		{"transpose hwc", func() (*tensor.Tensor, error) { return s.transpose(ft([]int64{2, 2, 3}, seq(12)...), []int{2, 0, 1}) },
			[]int64{3, 2, 2}, []float32{0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11}},
		{"resize identity", func() (*tensor.Tensor, error) { return s.resize(ft([]int64{1, 1, 2, 2}, 1, 2, 3, 4), 2, 2, 0) }, []int64{1, 1, 2, 2}, []float32{1, 2, 3, 4}},
		{"resize down", func() (*tensor.Tensor, error) { return s.resize(ft([]int64{1, 2, 1}, 0, 10), 1, 1, 1) }, []int64{1, 1, 1}, []float32{5}},
		{"resize up", func() (*tensor.Tensor, error) { return s.resize(ft([]int64{1, 1, 1, 2}, 0, 4), 1, 4, 0) }, []int64{1, 1, 1, 4}, []float32{0, 1, 3, 4}},
		{"reshape", func() (*tensor.Tensor, error) { return reshape(ft([]int64{2, 3}, seq(6)...), []int64{3, -1}) }, []int64{3, 2}, seq(6)},
		{"concat", func() (*tensor.Tensor, error) {
			return s.concat([]*tensor.Tensor{ft([]int64{1, 2}, 1, 2), ft([]int64{1, 2}, 3, 4)})
		}, []int64{2, 2}, []float32{1, 2, 3, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y, err := tt.op()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(y.Shape, tt.shape) || !near(tensor.View[float32](y), tt.want) {
				t.Fatalf("got %v %v, want %v %v", y.Shape, tensor.View[float32](y), tt.shape, tt.want)
			}
		})
	}
}

func TestTopKAndCast(t *testing.T) {
	s := NewSession(Env{})
	v, i, err := s.topk(ft([]int64{2, 3}, 1, 3, 2, 5, 5, 0), 2)
	if err != nil {
		t.Fatal(err)
	}
	if !near(tensor.View[float32](v), []float32{3, 2, 5, 5}) || !reflect.DeepEqual(tensor.View[int64](i), []int64{1, 2, 0, 1}) {
		t.Fatalf("topk = %v %v", tensor.View[float32](v), tensor.View[int64](i))
	}
	c, err := s.cast(ft([]int64{3}, -1.5, 2.7, 300), tensor.Int32)
	if err != nil {
		t.Fatal(err)
	}
	if got := tensor.View[int32](c); !reflect.DeepEqual(got, []int32{-1, 2, 300}) {
		t.Fatalf("cast = %v", got)
	}
	tr, err := s.transpose(tensor.FromSlice("u", tensor.Uint8, []int64{2, 2}, []uint8{1, 2, 3, 4}), []int{1, 0})
	if err != nil || !reflect.DeepEqual(tr.Data, []byte{1, 3, 2, 4}) {
		t.Fatalf("uint8 transpose = %v, %v", tr, err)
	}
}

func TestOpErrors(t *testing.T) {
	s := NewSession(Env{Limits: Limits{MaxBytes: 1 << 10}})
	x := ft([]int64{2, 2}, 1, 2, 3, 4)
	tests := []struct {
		name string
		err  error
		op   func() error
	}{
		{"bad axis", errInvalid, func() error { _, err := s.softmax(x, 2); return err }},
		{"bad dtype", errInvalid, func() error { _, err := s.relu(tensor.New("i", tensor.Int64, 2)); return err }},
		{"matmul shapes", errInvalid, func() error { _, err := s.matmul(x, ft([]int64{3, 1}, 1, 2, 3)); return err }},
		{"add shapes", errInvalid, func() error { _, err := s.add(x, ft([]int64{3}, 1, 2, 3)); return err }},
		{"bad perm", errInvalid, func() error { _, err := s.transpose(x, []int{0, 0}); return err }},
		{"topk k", errInvalid, func() error { _, _, err := s.topk(x, 3); return err }},
		{"std zero", errInvalid, func() error { _, err := s.normalize(x, 1, []float32{0, 0}, []float32{1, 0}, 0); return err }},
		{"reshape count", errInvalid, func() error { _, err := reshape(x, []int64{3}); return err }},
		{"resize huge", ErrLimit, func() error { _, err := s.resize(ft([]int64{1, 1, 1, 1}, 1), 1<<20, 1<<20, 0); return err }},
		{"resize overflow", ErrLimit, func() error {
			_, err := s.resize(ft([]int64{1, 1, 1, 1}, 1), math.MaxInt32, math.MaxInt32, 0)
			return err
		}},
		{"image not image", nil, func() error {
			_, err := s.decodeImage(&tensor.Tensor{DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{[]byte("x")}})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			if err == nil || (tt.err != nil && !errors.Is(err, tt.err)) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
	if !s.Exceeded() {
		t.Fatal("Exceeded is false after a limit error")
	}
	s.EndCall()
	if s.Exceeded() || s.Handles() != 0 {
		t.Fatal("EndCall did not reset the call")
	}
}

func TestSessionHandles(t *testing.T) {
	s := NewSession(Env{Limits: Limits{MaxHandles: 2}})
	a := s.Put(ft([]int64{1}, 1))
	if a == 0 {
		t.Fatal("Put failed")
	}
	b, err := s.store(ft([]int64{1}, 2), 4)
	if err != nil {
		t.Fatal(err)
	}
	s.tab[b].pinned = true
	if _, err := s.store(ft([]int64{1}, 3), 4); !errors.Is(err, ErrLimit) {
		t.Fatalf("third handle: %v, want ErrLimit", err)
	}
	s.EndCall()
	if _, ok := s.Get(a); ok {
		t.Fatal("unpinned handle survived EndCall")
	}
	if _, ok := s.Get(b); !ok {
		t.Fatal("pinned handle did not survive EndCall")
	}
	s.Close()
	if s.Handles() != 0 {
		t.Fatal("Close left handles")
	}
}
