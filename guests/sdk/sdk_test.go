package sdk

import (
	"slices"
	"testing"
)

// A tensor does not share its shape with the caller, either way.
func TestShapeIsCopied(t *testing.T) {
	shape := []int64{1, 2}
	x := Float32s("x", shape, []float32{1, 2})
	shape[1] = 7
	got := x.Shape()
	got[0] = 9
	if s := x.Shape(); !slices.Equal(s, []int64{1, 2}) || x.Len() != 2 {
		t.Fatalf("shape %v, len %d after the caller changed its slices", s, x.Len())
	}
}
