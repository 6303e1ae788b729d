package tensor

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"testing"
)

func TestConcat(t *testing.T) {
	f32 := func(shape []int64, v ...float32) *Tensor { return FromSlice("x", FP32, shape, v) }
	str := func(shape []int64, v ...string) *Tensor {
		t := New("s", Bytes, shape...)
		for i, s := range v {
			t.Strings[i] = []byte(s)
		}
		return t
	}
	tests := []struct {
		name    string
		parts   []*Tensor
		want    *Tensor
		wantErr error
		errHas  string
	}{
		{
			name:  "fp32 rows",
			parts: []*Tensor{f32([]int64{1, 2}, 1, 2), f32([]int64{2, 2}, 3, 4, 5, 6)},
			want:  f32([]int64{3, 2}, 1, 2, 3, 4, 5, 6),
		},
		{
			name:  "single part is copied",
			parts: []*Tensor{f32([]int64{2}, 7, 8)},
			want:  f32([]int64{2}, 7, 8),
		},
		{
			name:  "zero-row part",
			parts: []*Tensor{f32([]int64{0, 3}), f32([]int64{1, 3}, 1, 2, 3)},
			want:  f32([]int64{1, 3}, 1, 2, 3),
		},
		{
			name:  "rank 3",
			parts: []*Tensor{f32([]int64{1, 1, 2}, 1, 2), f32([]int64{1, 1, 2}, 3, 4)},
			want:  f32([]int64{2, 1, 2}, 1, 2, 3, 4),
		},
		{
			name:  "bytes",
			parts: []*Tensor{str([]int64{1}, "a"), str([]int64{2}, "bc", "")},
			want:  str([]int64{3}, "a", "bc", ""),
		},
		{name: "no parts", parts: nil, wantErr: ErrIncompatible},
		{name: "nil part", parts: []*Tensor{f32([]int64{1}, 1), nil}, wantErr: ErrIncompatible},
		{name: "scalar", parts: []*Tensor{f32(nil, 1)}, wantErr: ErrIncompatible, errHas: "scalar"},
		{
			name:    "dtype mismatch",
			parts:   []*Tensor{f32([]int64{1}, 1), FromSlice("y", Int32, []int64{1}, []int32{1})},
			wantErr: ErrIncompatible, errHas: "dtype INT32, want FP32",
		},
		{
			name:    "rank mismatch",
			parts:   []*Tensor{f32([]int64{1, 2}, 1, 2), f32([]int64{2}, 1, 2)},
			wantErr: ErrIncompatible, errHas: "rank 1",
		},
		{
			name:    "trailing dim mismatch",
			parts:   []*Tensor{f32([]int64{1, 2}, 1, 2), f32([]int64{1, 3}, 1, 2, 3)},
			wantErr: ErrIncompatible, errHas: "dim 1 is 3",
		},
		{
			name:    "bad data",
			parts:   []*Tensor{f32([]int64{1, 2}, 1, 2), {Name: "x", DType: FP32, Shape: []int64{1, 2}, Data: make([]byte, 4)}},
			wantErr: ErrShape,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Concat("out", tc.parts)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if tc.errHas != "" && !bytes.Contains([]byte(err.Error()), []byte(tc.errHas)) {
					t.Fatalf("err = %q, want it to mention %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.want.Name = "out"
			assertEqual(t, got, tc.want)
			if got.DType != Bytes && len(got.Data) > 0 {
				for _, p := range tc.parts {
					if len(p.Data) > 0 && &p.Data[0] == &got.Data[0] {
						t.Fatal("result aliases a part")
					}
				}
			}
		})
	}
}

func TestSplit(t *testing.T) {
	src := FromSlice("x", Int32, []int64{4, 2}, []int32{0, 1, 2, 3, 4, 5, 6, 7})
	str := New("s", Bytes, 3)
	for i := range str.Strings {
		str.Strings[i] = []byte{byte('a' + i)}
	}
	tests := []struct {
		name    string
		in      *Tensor
		sizes   []int64
		want    [][]int32 // for Int32
		wantStr [][]string
		wantErr bool
	}{
		{name: "even", in: src, sizes: []int64{2, 2}, want: [][]int32{{0, 1, 2, 3}, {4, 5, 6, 7}}},
		{name: "uneven with empty", in: src, sizes: []int64{1, 0, 3}, want: [][]int32{{0, 1}, nil, {2, 3, 4, 5, 6, 7}}},
		{name: "whole", in: src, sizes: []int64{4}, want: [][]int32{{0, 1, 2, 3, 4, 5, 6, 7}}},
		{name: "bytes", in: str, sizes: []int64{2, 1}, wantStr: [][]string{{"a", "b"}, {"c"}}},
		{name: "too few", in: src, sizes: []int64{1, 2}, wantErr: true},
		{name: "too many", in: src, sizes: []int64{3, 2}, wantErr: true},
		{name: "negative", in: src, sizes: []int64{5, -1}, wantErr: true},
		// Sizes whose int64 sum wraps around to dim 0.
		{name: "wrapping", in: src, sizes: []int64{1, math.MaxInt64, math.MaxInt64, 5}, wantErr: true},
		{name: "scalar", in: FromSlice("x", Int32, nil, []int32{1}), sizes: []int64{1}, wantErr: true},
		{name: "nil", in: nil, sizes: []int64{1}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parts, err := Split(tc.in, tc.sizes)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(parts) != len(tc.sizes) {
				t.Fatalf("got %d parts, want %d", len(parts), len(tc.sizes))
			}
			for i, p := range parts {
				if err := p.Validate(); err != nil {
					t.Fatalf("part %d: %v", i, err)
				}
				if p.Shape[0] != tc.sizes[i] || p.Name != tc.in.Name || p.DType != tc.in.DType {
					t.Fatalf("part %d: %+v", i, p)
				}
				if tc.want != nil {
					if got := View[int32](p); !reflect.DeepEqual(got, tc.want[i]) && !(len(got) == 0 && len(tc.want[i]) == 0) {
						t.Fatalf("part %d = %v, want %v", i, got, tc.want[i])
					}
				}
				if tc.wantStr != nil {
					var got []string
					for _, s := range p.Strings {
						got = append(got, string(s))
					}
					if !reflect.DeepEqual(got, tc.wantStr[i]) {
						t.Fatalf("part %d = %q, want %q", i, got, tc.wantStr[i])
					}
				}
			}
		})
	}
}

func TestSplitPartsAreCapped(t *testing.T) {
	src := FromSlice("x", Uint8, []int64{4}, []uint8{1, 2, 3, 4})
	parts, err := Split(src, []int64{2, 2})
	if err != nil {
		t.Fatal(err)
	}
	_ = append(parts[0].Data, 99) // must reallocate, not overwrite part 1
	if parts[1].Data[0] != 3 {
		t.Fatalf("append to part 0 overwrote part 1: %v", parts[1].Data)
	}
	parts[1].Shape[0] = 7 // shapes are the parts' own
	if src.Shape[0] != 4 || parts[0].Shape[0] != 2 {
		t.Fatal("shape shared")
	}
}

func TestConcatSplitRoundTrip(t *testing.T) {
	for _, dt := range DTypes() {
		t.Run(dt.String(), func(t *testing.T) {
			sizes := []int64{1, 3, 0, 2}
			var parts []*Tensor
			for i, n := range sizes {
				p := New(fmt.Sprint(i), dt, n, 2, 3)
				for j := range p.Data {
					p.Data[j] = byte(i*31 + j)
				}
				for j := range p.Strings {
					p.Strings[j] = []byte(fmt.Sprint(i, j))
				}
				parts = append(parts, p)
			}
			all, err := Concat("all", parts)
			if err != nil {
				t.Fatal(err)
			}
			if want := []int64{6, 2, 3}; !reflect.DeepEqual(all.Shape, want) {
				t.Fatalf("shape %v, want %v", all.Shape, want)
			}
			back, err := Split(all, sizes)
			if err != nil {
				t.Fatal(err)
			}
			for i := range parts {
				parts[i].Name = "all"
				assertEqual(t, back[i], parts[i])
			}
		})
	}
}

func assertEqual(t *testing.T, got, want *Tensor) {
	t.Helper()
	if got.Name != want.Name || got.DType != want.DType || !reflect.DeepEqual(got.Shape, want.Shape) {
		t.Fatalf("got %s %v %v, want %s %v %v", got.Name, got.DType, got.Shape, want.Name, want.DType, want.Shape)
	}
	if !bytes.Equal(got.Data, want.Data) {
		t.Fatalf("data %v, want %v", got.Data, want.Data)
	}
	if len(got.Strings) != len(want.Strings) {
		t.Fatalf("strings %q, want %q", got.Strings, want.Strings)
	}
	for i := range got.Strings {
		if !bytes.Equal(got.Strings[i], want.Strings[i]) {
			t.Fatalf("strings %q, want %q", got.Strings, want.Strings)
		}
	}
}

func BenchmarkConcat(b *testing.B) {
	parts := make([]*Tensor, 8)
	for i := range parts {
		parts[i] = New("x", FP32, 4, 3, 224, 224)
	}
	b.SetBytes(int64(len(parts) * len(parts[0].Data)))
	for b.Loop() {
		if _, err := Concat("x", parts); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSplit(b *testing.B) {
	t := New("x", FP32, 32, 1000)
	sizes := []int64{4, 4, 4, 4, 4, 4, 4, 4}
	for b.Loop() {
		if _, err := Split(t, sizes); err != nil {
			b.Fatal(err)
		}
	}
}

func TestConcatInto(t *testing.T) {
	a := New("a", FP32, 1, 2)
	b := New("b", FP32, 2, 2)
	copy(View[float32](a), []float32{1, 2})
	copy(View[float32](b), []float32{3, 4, 5, 6})
	want := []float32{1, 2, 3, 4, 5, 6}

	buf := make([]byte, 0, 64)
	out, err := ConcatInto("x", []*Tensor{a, b}, buf)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(View[float32](out), want) || !slices.Equal(out.Shape, []int64{3, 2}) {
		t.Fatalf("got %v %v", out.Shape, View[float32](out))
	}
	if &out.Data[0] != &buf[:1][0] {
		t.Error("a buffer large enough was not used")
	}

	small := make([]byte, 0, 8)
	out, err = ConcatInto("x", []*Tensor{a, b}, small)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(View[float32](out), want) {
		t.Fatalf("got %v", View[float32](out))
	}
	if &out.Data[0] == &small[:1][0] {
		t.Error("a buffer too small was written past its capacity")
	}
}

// A buffer that holds a part's data is not written into: the parts of a
// split of the last result, joined again into the same buffer in another
// order, were overwritten before they were read.
func TestConcatIntoBufferHoldingAPart(t *testing.T) {
	buf := make([]byte, 0, 64)
	prev, err := ConcatInto("x", []*Tensor{
		FromSlice("a", Int32, []int64{2}, []int32{1, 2}),
		FromSlice("b", Int32, []int64{2}, []int32{3, 4}),
	}, buf)
	if err != nil {
		t.Fatal(err)
	}
	pieces, err := Split(prev, []int64{2, 2})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ConcatInto("y", []*Tensor{pieces[1], pieces[0]}, buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := View[int32](out), []int32{3, 4, 1, 2}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got := View[int32](pieces[0]); !slices.Equal(got, []int32{1, 2}) {
		t.Fatalf("a part was overwritten: %v", got)
	}
}

// Splitting a tensor and joining the parts again, into a fresh buffer or
// into the tensor's own (the engine reuses its batch buffers), gives the
// tensor back.
func FuzzSplitConcat(f *testing.F) {
	f.Add([]byte{2, 0, 3}, uint8(2), false)
	f.Add([]byte{1, 2}, uint8(3), true)
	f.Add([]byte{0}, uint8(5), true)
	f.Fuzz(func(t *testing.T, sizes []byte, width uint8, own bool) {
		if len(sizes) == 0 || len(sizes) > 64 {
			return
		}
		var rows int64
		split := make([]int64, len(sizes))
		for i, s := range sizes {
			split[i] = int64(s % 8)
			rows += split[i]
		}
		w := int64(width % 8)
		x := New("x", Int16, rows, w)
		for i := range x.Data {
			x.Data[i] = byte(i * 7)
		}
		want := x.Clone()
		parts, err := Split(x, split)
		if err != nil {
			t.Fatal(err)
		}
		var buf []byte
		if own {
			buf = x.Data[:0]
		}
		// Reversed, then in order: the first join must not spoil the parts.
		slices.Reverse(parts)
		if _, err := ConcatInto("x", parts, buf); err != nil {
			t.Fatal(err)
		}
		slices.Reverse(parts)
		got, err := ConcatInto("x", parts, buf)
		if err != nil {
			t.Fatal(err)
		}
		assertEqual(t, got, want)
	})
}
