package safetensors_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/safetensors"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

func sample(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	ts := []*tensor.Tensor{
		tensor.FromSlice("w", tensor.FP32, []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6}),
		tensor.FromSlice("b", tensor.Int64, []int64{2}, []int64{-1, 7}),
		tensor.FromSlice("s", tensor.Uint8, []int64{}, []uint8{9}),
	}
	if err := safetensors.Write(&buf, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	f, err := safetensors.Parse(sample(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Names(); !reflect.DeepEqual(got, []string{"w", "b", "s"}) {
		t.Fatalf("Names = %v", got)
	}
	w, err := f.Tensor("w")
	if err != nil {
		t.Fatal(err)
	}
	if got := tensor.View[float32](w); !reflect.DeepEqual(got, []float32{1, 2, 3, 4, 5, 6}) || !reflect.DeepEqual(w.Shape, []int64{2, 3}) {
		t.Fatalf("w = %v %v", w.Shape, got)
	}
	b, _ := f.Tensor("b")
	if got := tensor.View[int64](b); !reflect.DeepEqual(got, []int64{-1, 7}) {
		t.Fatalf("b = %v", got)
	}
	if f.Metadata["format"] != "pt" {
		t.Fatalf("metadata = %v", f.Metadata)
	}
	if _, err := f.Tensor("nope"); !errors.Is(err, loaders.ErrInvalidModel) {
		t.Fatalf("missing tensor: %v", err)
	}
}

func file(header string, data int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, make([]byte, data)...)
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", []byte{1, 2, 3}},
		{"header too long", binary.LittleEndian.AppendUint64(nil, 1<<40)},
		{"not json", file("{", 0)},
		{"not object", file("[]", 0)},
		{"dtype", file(`{"x":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}}`, 1)},
		{"offsets past end", file(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4)},
		{"size mismatch", file(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 8)},
		{"negative offset", file(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`, 8)},
		{"reversed", file(`{"x":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}}`, 8)},
		{"one offset", file(`{"x":{"dtype":"U8","shape":[1],"data_offsets":[0]}}`, 8)},
		{"negative dim", file(`{"x":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}`, 8)},
		{"overflow", file(`{"x":{"dtype":"F64","shape":[4611686018427387904,4],"data_offsets":[0,8]}}`, 8)},
		{"overflow before a zero", file(`{"x":{"dtype":"U8","shape":[4611686018427387904,4,0],"data_offsets":[0,0]}}`, 0)},
		{"overlap", file(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}`, 8)},
		{"metadata", file(`{"__metadata__":{"a":1}}`, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := safetensors.Parse(tt.b); !errors.Is(err, loaders.ErrInvalidModel) {
				t.Fatalf("err = %v, want ErrInvalidModel", err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample(f))
	f.Add(file(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4))
	f.Fuzz(func(t *testing.T, b []byte) {
		sf, err := safetensors.Parse(b)
		if err != nil {
			return
		}
		for _, name := range sf.Names() {
			x, err := sf.Tensor(name)
			if err != nil {
				t.Fatalf("Tensor(%q): %v", name, err)
			}
			if err := x.Validate(); err != nil {
				t.Fatalf("Tensor(%q): %v", name, err)
			}
		}
	})
}
