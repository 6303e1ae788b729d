package cyxwiz

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// topk orders NaN above everything, the same for k=1 and k>=2 (they
// disagreed on [1, NaN, 2]).
func TestTopKNaNOrder(t *testing.T) {
	s := NewSession(Env{})
	x := ft([]int64{3}, 1, float32(math.NaN()), 2)
	v1, _, err := s.topk(x, 1)
	if err != nil {
		t.Fatal(err)
	}
	v2, i2, err := s.topk(x, 2)
	if err != nil {
		t.Fatal(err)
	}
	a, b := tensor.View[float32](v1), tensor.View[float32](v2)
	t.Logf("topk k=1 of [1, NaN, 2]: %v; k=2: %v (indices %v)", a, b, tensor.View[int64](i2))
	if math.Float32bits(a[0]) != math.Float32bits(b[0]) {
		t.Errorf("the largest of [1, NaN, 2] is %v with k=1 and %v with k=2", a[0], b[0])
	}
}

// TestTopKMatchesSort checks the heap against a full sort on random rows
// with ties and NaNs, for every k.
func TestTopKMatchesSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := NewSession(Env{})
	for trial := range 200 {
		n := 1 + rng.IntN(40)
		rows := 1 + rng.IntN(3)
		x := tensor.New("x", tensor.FP32, int64(rows), int64(n))
		v := tensor.View[float32](x)
		for i := range v {
			switch rng.IntN(8) {
			case 0:
				v[i] = float32(math.NaN())
			case 1, 2:
				v[i] = 1 // ties
			default:
				v[i] = float32(rng.IntN(10)) - 5
			}
		}
		for k := 1; k <= n; k++ {
			vals, idx, err := s.topk(x, k)
			if err != nil {
				t.Fatal(err)
			}
			for r := range rows {
				row := v[r*n : (r+1)*n]
				order := make([]int, n)
				for i := range order {
					order[i] = i
				}
				slices.SortStableFunc(order, func(a, b int) int {
					if before(row, a, b) {
						return -1
					}
					if before(row, b, a) {
						return 1
					}
					return 0
				})
				gotI := tensor.View[int64](idx)[r*k : (r+1)*k]
				gotV := tensor.View[float32](vals)[r*k : (r+1)*k]
				for j := range k {
					if gotI[j] != int64(order[j]) || math.Float32bits(gotV[j]) != math.Float32bits(row[order[j]]) {
						t.Fatalf("trial %d row %v k=%d: got %v %v, want order %v", trial, row, k, gotI, gotV, order[:k])
					}
				}
			}
			s.EndCall()
		}
	}
}
