package safetensors_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/safetensors"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A zero-element tensor at the offset where the next tensor starts (what
// the reference writer produces for an empty tensor: [k, k] then [k, k+n])
// is accepted every time: sorting spans by begin only made it depend on
// Go's random map order.
func TestEmptyTensorSharingOffsetIsDeterministic(t *testing.T) {
	b := file(`{"empty":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8)
	ok, failed := 0, 0
	var lastErr error
	for range 200 {
		if _, err := safetensors.Parse(b); err != nil {
			failed++
			lastErr = err
		} else {
			ok++
		}
	}
	if failed > 0 {
		t.Errorf("the same file parsed %d times and failed %d times (last error: %v)", ok, failed, lastErr)
	}
}

// Write refuses a tensor named "__metadata__": its file would not parse
// (the name is taken for the metadata map).
func TestWriteRefusesMetadataName(t *testing.T) {
	var buf bytes.Buffer
	ts := []*tensor.Tensor{tensor.FromSlice("__metadata__", tensor.FP32, []int64{1}, []float32{1})}
	if err := safetensors.Write(&buf, ts, nil); err != nil {
		t.Logf("Write refused it: %v", err)
		return
	}
	if _, err := safetensors.Parse(buf.Bytes()); err != nil {
		t.Errorf("Write succeeded but its output does not parse: %v", err)
	}
}

// Header keys are matched exactly, as the reference (serde) reader does:
// encoding/json alone let "DTYPE" override "dtype", so the same bytes meant
// F32 [2] there and U8 [8] here.
func TestHeaderKeysExact(t *testing.T) {
	b := file(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"DTYPE":"U8","SHAPE":[8]}}`, 8)
	f, err := safetensors.Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := f.Tensors["w"]; got.DType != tensor.FP32 {
		t.Errorf(`tensor "w" read as %v %v; its "dtype" key says F32 [2]`, got.DType, got.Shape)
	}
}

// A name given twice in the header is refused: encoding/json kept the last
// silently, so the same bytes could mean one tensor to a reader keeping the
// first (or refusing, as the reference does for an entry's fields) and
// another here, and the loser's offsets were never checked.
func TestDuplicateNamesRefused(t *testing.T) {
	for name, header := range map[string]string{
		"tensor":          `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`,
		"tensor, escaped": `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"\u0077":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`,
		"metadata":        `{"__metadata__":{"a":"1"},"__metadata__":{"a":"2"},"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`,
		"metadata key":    `{"__metadata__":{"a":"1","a":"2"},"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`,
		"dtype":           `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"dtype":"U8"}}`,
		"shape":           `{"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8],"shape":[2,4]}}`,
		"data_offsets":    `{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"data_offsets":[4,8]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			if f, err := safetensors.Parse(file(header, 8)); !errors.Is(err, loaders.ErrInvalidModel) {
				t.Fatalf("Parse = %v, %v; want ErrInvalidModel", f, err)
			}
		})
	}
}

// An entry without "shape" (or with a null one) is refused, as by the
// reference reader: it was read as a scalar.
func TestEntryNeedsEveryField(t *testing.T) {
	for name, header := range map[string]string{
		"no shape":   `{"w":{"dtype":"F32","data_offsets":[0,4]}}`,
		"null shape": `{"w":{"dtype":"F32","shape":null,"data_offsets":[0,4]}}`,
		"no dtype":   `{"w":{"shape":[1],"data_offsets":[0,4]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			if f, err := safetensors.Parse(file(header, 4)); !errors.Is(err, loaders.ErrInvalidModel) {
				t.Fatalf("Parse = %+v, %v; want ErrInvalidModel", f, err)
			}
		})
	}
	// A scalar says so.
	f, err := safetensors.Parse(file(`{"w":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}`, 4))
	if err != nil || len(f.Tensors["w"].Shape) != 0 {
		t.Fatalf("scalar: %+v, %v", f, err)
	}
}

// Write refuses names and metadata that are not UTF-8: encoding/json wrote
// U+FFFD for them, so the file named the tensors otherwise, and two
// different names could come out as one (the second tensor then lost).
func TestWriteRefusesNonUTF8(t *testing.T) {
	for name, tc := range map[string]struct {
		names []string
		meta  map[string]string
	}{
		"names":          {names: []string{"a\xff", "a\xfe"}},
		"metadata key":   {names: []string{"w"}, meta: map[string]string{"\xff": "v"}},
		"metadata value": {names: []string{"w"}, meta: map[string]string{"k": "\xff"}},
	} {
		t.Run(name, func(t *testing.T) {
			var ts []*tensor.Tensor
			for i, n := range tc.names {
				ts = append(ts, tensor.FromSlice(n, tensor.FP32, []int64{1}, []float32{float32(i)}))
			}
			var buf bytes.Buffer
			if err := safetensors.Write(&buf, ts, tc.meta); err == nil {
				f, err := safetensors.Parse(buf.Bytes())
				t.Fatalf("Write accepted %q %q; the file reads back as %+v (%v)", tc.names, tc.meta, f, err)
			}
		})
	}
}

// The tensors must cover the data section exactly, as the reference reader
// requires (InvalidOffset, MetadataIncompleteBuffer): bytes before the
// first tensor, between two, or after the last were accepted, so a file
// the reference refuses (a download cut short and padded, a doctored
// header) loaded here.
func TestDataMustBeCoveredExactly(t *testing.T) {
	for name, tc := range map[string]struct {
		header string
		data   int
	}{
		"trailing bytes":     {`{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, 8},
		"gap at the start":   {`{"w":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, 8},
		"gap between":        {`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}`, 6},
		"no tensor, data":    {`{}`, 8},
		"empty tensor, data": {`{"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}`, 4},
		"empty inside other": {`{"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"e":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}}`, 8},
	} {
		t.Run(name, func(t *testing.T) {
			if f, err := safetensors.Parse(file(tc.header, tc.data)); !errors.Is(err, loaders.ErrInvalidModel) {
				t.Fatalf("Parse = %+v, %v; want ErrInvalidModel", f, err)
			}
		})
	}
	// What the reference accepts still parses: tensors in any header
	// order, empty ones at the start, between and at the end, no tensor
	// and no data.
	for name, tc := range map[string]struct {
		header string
		data   int
	}{
		"out of order":  {`{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, 4},
		"empties":       {`{"e0":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"e1":{"dtype":"U8","shape":[0,3],"data_offsets":[2,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"e2":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}}`, 4},
		"nothing":       {`{}`, 0},
		"metadata only": {`{"__metadata__":{"k":"v"}}`, 0},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := safetensors.Parse(file(tc.header, tc.data)); err != nil {
				t.Fatalf("Parse: %v", err)
			}
		})
	}
}

// A header longer than the reference's limit (100,000,000 bytes) is
// refused: MaxHeader was 100 << 20, which let through up to 4,857,600 more.
func TestHeaderLimitIsTheReferences(t *testing.T) {
	const limit = 100_000_000
	header := append([]byte("{}"), bytes.Repeat([]byte{' '}, limit-1)...)
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	if _, err := safetensors.Parse(b); !errors.Is(err, loaders.ErrInvalidModel) {
		t.Fatalf("a header of %d bytes: Parse error %v, want ErrInvalidModel", len(header), err)
	}
}

// A null metadata value is refused, as by the reference reader (a map of
// strings): encoding/json read it as "", so the file said one thing there
// and another here.
func TestMetadataNullValueRefused(t *testing.T) {
	for _, header := range []string{
		`{"__metadata__":{"format":null}}`,
		`{"__metadata__":{"a":"1", "format" : null }}`,
	} {
		if f, err := safetensors.Parse(file(header, 0)); !errors.Is(err, loaders.ErrInvalidModel) {
			t.Errorf("%s: Parse = %+v, %v; want ErrInvalidModel", header, f, err)
		}
	}
	// A null map is no metadata, as there.
	if f, err := safetensors.Parse(file(`{"__metadata__":null}`, 0)); err != nil || f.Metadata != nil {
		t.Errorf("null metadata: %+v, %v", f, err)
	}
}

// A dtype of the format that no KServe datatype holds (FP8, FP4, FP6,
// complex) is named as unsupported: "unknown dtype" read as a corrupt
// file, though the reference reads it.
func TestUnsupportedDTypeSaysSo(t *testing.T) {
	for _, dt := range []string{"F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "C64"} {
		size := map[string]int{"C64": 8}[dt]
		if size == 0 {
			size = 1
		}
		_, err := safetensors.Parse(file(`{"w":{"dtype":"`+dt+`","shape":[1],"data_offsets":[0,`+strconv.Itoa(size)+`]}}`, size))
		if !errors.Is(err, loaders.ErrInvalidModel) || !strings.Contains(err.Error(), "not supported") {
			t.Errorf("%s: Parse error %v, want ErrInvalidModel saying the dtype is not supported", dt, err)
		}
	}
	if _, err := safetensors.Parse(file(`{"w":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}}`, 1)); err == nil || !strings.Contains(err.Error(), "unknown dtype") {
		t.Errorf("Q8: Parse error %v, want unknown dtype", err)
	}
}
