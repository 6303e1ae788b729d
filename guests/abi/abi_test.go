package abi

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		list []Tensor
	}{
		{"empty", nil},
		{"fp32", []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{1, 2}, DataLen: 8, Data: make([]byte, 8)}}},
		{"scalar", []Tensor{{Name: "s", DType: DTypeInt64, Shape: []int64{}, DataLen: 8, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}}}},
		{"bytes", []Tensor{{Name: "label", DType: DTypeBytes, Shape: []int64{2}, DataLen: 12, Strings: [][]byte{[]byte("0"), []byte("180")}}}},
		{"handle", []Tensor{{Name: "h", DType: DTypeFP32, Shape: []int64{3, 48, 192}, Handle: 7, DataLen: 3 * 48 * 192 * 4}}},
		{"mixed", []Tensor{
			{Name: "a", DType: DTypeUint8, Shape: []int64{3}, DataLen: 3, Data: []byte{1, 2, 3}},
			{Name: "b", DType: DTypeFP32, Shape: []int64{2}, Handle: 1, DataLen: 8},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := Encode(nil, tt.list)
			got, err := Decode(b, Size)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.list) {
				t.Fatalf("got %d entries, want %d", len(got), len(tt.list))
			}
			for i := range got {
				if !reflect.DeepEqual(got[i], tt.list[i]) {
					t.Errorf("entry %d: got %+v, want %+v", i, got[i], tt.list[i])
				}
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	good := Encode(nil, []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{2}, Data: make([]byte, 8)}})
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		b    []byte
	}{
		{"short", good[:5]},
		{"magic", mut(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"version", mut(func(b []byte) []byte { b[4] = 9; return b })},
		{"huge count", mut(func(b []byte) []byte { b[8], b[9], b[10], b[11] = 0xff, 0xff, 0xff, 0xff; return b })},
		{"truncated", good[:len(good)-1]},
		{"trailing", append(bytes.Clone(good), 0)},
		// Reserved bytes are 0 (ABI.md): Decode ignored them, so two
		// encodings stood for one list.
		{"reserved header u8", mut(func(b []byte) []byte { b[5] = 1; return b })},
		{"reserved header u16", mut(func(b []byte) []byte { b[7] = 1; return b })},
		{"reserved entry u8", mut(func(b []byte) []byte { b[18] = 1; return b })},
		{"dtype", mut(func(b []byte) []byte { b[15] = 99; return b })},
		{"size mismatch", Encode(nil, []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{3}, Data: make([]byte, 8)}})},
		{"negative dim", Encode(nil, []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{-1}}})},
		{"bytes count", Encode(nil, []Tensor{{Name: "s", DType: DTypeBytes, Shape: []int64{3}, Strings: [][]byte{{1}}}})},
		{"handle zero", mut(func(b []byte) []byte { b[16] = KindHandle; return b })},
		// ABI.md: names are UTF-8. A guest's output named otherwise would
		// be passed on to a KServe response that protobuf cannot marshal.
		{"name not UTF-8", Encode(nil, []Tensor{{Name: "y\xff", DType: DTypeFP32, Shape: []int64{2}, Data: make([]byte, 8)}})},
		{"handle name not UTF-8", Encode(nil, []Tensor{{Name: "\xc3", DType: DTypeFP32, Handle: 3}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Decode(tt.b, Size); !errors.Is(err, ErrCodec) {
				t.Fatalf("err = %v, want ErrCodec", err)
			}
		})
	}
}

func TestPack(t *testing.T) {
	v := Pack(0x7fff_fff0, 0xffff_ffff)
	if p, n := Unpack(v); p != 0x7fff_fff0 || n != 0xffff_ffff {
		t.Fatalf("Unpack = %x %x", p, n)
	}
	if v < 0 {
		t.Fatal("packed value with ptr < 2^31 is negative")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode(nil, []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{2}, Data: make([]byte, 8)}}))
	f.Add(Encode(nil, []Tensor{{Name: "s", DType: DTypeBytes, Shape: []int64{1}, Strings: [][]byte{[]byte("hi")}}, {Name: "h", DType: DTypeFP32, Handle: 3}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := Decode(b, Size)
		if err != nil {
			return
		}
		again, err := Decode(Encode(nil, list), Size)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(again) != len(list) {
			t.Fatalf("re-decode: %d entries, want %d", len(again), len(list))
		}
	})
}

// A name too long for its 16-bit length is cut to MaxNameLen: its bytes can
// never be read as the entry's fields (a crafted name could forge them).
func TestEncodeCutsWhatItCannotFrame(t *testing.T) {
	name := strings.Repeat("n", MaxNameLen+10)
	data := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	list, err := Decode(Encode(nil, []Tensor{{Name: name, DType: DTypeInt64, Shape: []int64{1}, Data: data}}), Size)
	if err != nil {
		t.Fatal(err)
	}
	if got := list[0]; got.Name != name[:MaxNameLen] || got.DType != DTypeInt64 || len(got.Shape) != 1 || !bytes.Equal(got.Data, data) {
		t.Fatalf("decoded %d-byte name, dtype %d, shape %v, data %v", len(got.Name), got.DType, got.Shape, got.Data)
	}
}

// A long name is cut between characters: what Encode frames, Decode takes.
func TestEncodeCutsNamesBetweenCharacters(t *testing.T) {
	name := strings.Repeat("é", MaxNameLen/2+1) // the cut falls inside an é
	list, err := Decode(Encode(nil, []Tensor{{Name: name, DType: DTypeInt64, Shape: []int64{1}, Data: make([]byte, 8)}}), Size)
	if err != nil {
		t.Fatal(err)
	}
	if got := list[0].Name; len(got) != MaxNameLen-1 || !strings.HasPrefix(name, got) {
		t.Fatalf("decoded a %d-byte name, want the first %d bytes", len(got), MaxNameLen-1)
	}
}

// Every list Decode accepts is the one encoding of what it decodes to:
// Encode gives back the same bytes, and decoding those gives the same
// tensors. Bytes Decode ignored (the reserved fields) would let two
// different encodings stand for one list, and a later version's flags be
// read as version 1's.
func FuzzDecodeCanonical(f *testing.F) {
	f.Add(Encode(nil, []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{2}, Data: make([]byte, 8)}}))
	f.Add(Encode(nil, []Tensor{{Name: "s", DType: DTypeBytes, Shape: []int64{2}, Strings: [][]byte{[]byte("hi"), nil}}, {Name: "h", DType: DTypeFP32, Shape: []int64{0, 3}, Handle: 3, DataLen: 12}}))
	f.Add(Encode(nil, []Tensor{{Name: "é", DType: DTypeInt64, Shape: []int64{}, Data: make([]byte, 8)}, {Name: "", DType: DTypeUint8, Shape: []int64{0, 1 << 62}}}))
	// One of each malformed class, for the fuzzer to start from: a count
	// past the bytes, dimensions whose product overflows int64, data not of
	// the shape's size, trailing bytes, a name that is not UTF-8.
	one := Encode(nil, []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{2}, Data: make([]byte, 8)}})
	f.Add(append(bytes.Clone(one[:8]), 0xff, 0xff, 0xff, 0xff))
	f.Add(Encode(nil, []Tensor{{Name: "x", DType: DTypeUint8, Shape: []int64{1 << 32, 1 << 32}}}))
	f.Add(Encode(nil, []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{1 << 61}, Data: make([]byte, 8)}}))
	f.Add(Encode(nil, []Tensor{{Name: "x", DType: DTypeFP32, Shape: []int64{3}, Data: make([]byte, 8)}}))
	f.Add(append(bytes.Clone(one), 0))
	f.Add(Encode(nil, []Tensor{{Name: "\xff", DType: DTypeFP32, Shape: []int64{2}, Data: make([]byte, 8)}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, size := range []func(uint8) int{Size, nil} {
			list, err := Decode(b, size)
			if err != nil {
				if !errors.Is(err, ErrCodec) {
					t.Fatalf("error %v is not ErrCodec", err)
				}
				continue
			}
			enc := Encode(nil, list)
			if !bytes.Equal(enc, b) {
				t.Fatalf("Encode(Decode(b)) differs from b:\n%x\n%x", enc, b)
			}
			again, err := Decode(enc, size)
			if err != nil {
				t.Fatalf("re-decode: %v", err)
			}
			if !reflect.DeepEqual(again, list) {
				t.Fatalf("re-decode: %+v, want %+v", again, list)
			}
		}
	})
}

// DecodeStrings parses BYTES data on its own (the SDK's New and
// tensor_read): whatever it accepts is the one encoding of its elements,
// and it never panics nor allocates for a count the bytes cannot hold.
func FuzzDecodeStrings(f *testing.F) {
	f.Add(AppendStrings(nil, [][]byte{[]byte("a"), nil, []byte("bc")}), int64(3))
	f.Add([]byte{9, 0, 0, 0, 'x'}, int64(-1))
	f.Add([]byte{}, int64(1<<62))
	f.Add([]byte{0, 0, 0, 0, 0, 0}, int64(1))
	f.Fuzz(func(t *testing.T, b []byte, want int64) {
		s, err := DecodeStrings(b, want)
		if err != nil {
			if !errors.Is(err, ErrCodec) {
				t.Fatalf("error %v is not ErrCodec", err)
			}
			return
		}
		if want >= 0 && int64(len(s)) != want {
			t.Fatalf("%d elements, want %d", len(s), want)
		}
		if enc := AppendStrings(nil, s); !bytes.Equal(enc, b) || StringsLen(s) != uint64(len(b)) {
			t.Fatalf("AppendStrings(DecodeStrings(b)) = %x, want %x", enc, b)
		}
	})
}
