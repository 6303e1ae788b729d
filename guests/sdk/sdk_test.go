package sdk

import (
	"slices"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
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

// New takes BYTES data in the ABI's encoding (u32 length + bytes per
// element): the SDK kept it aside and used its (empty) element list, so the
// tensor read as no elements and went out empty.
func TestNewBytes(t *testing.T) {
	data := abi.AppendStrings(nil, [][]byte{[]byte("a"), []byte("bc")})
	s, err := New("s", Bytes, []int64{2}, data).Strings()
	if err != nil || len(s) != 2 || string(s[0]) != "a" || string(s[1]) != "bc" {
		t.Fatalf("Strings() = %q, %v", s, err)
	}
	if err := New("s", Bytes, []int64{1}, []byte{9, 0, 0, 0, 'x'}).check(); err == nil {
		t.Fatal("malformed BYTES data: no error")
	}
	if _, err := New("s", Bytes, []int64{1}, []byte{9, 0, 0, 0, 'x'}).Strings(); err == nil {
		t.Fatal("malformed BYTES data: Strings gave no error")
	}
}
