package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// npyDTypes maps NumPy type strings to tensor datatypes (little-endian only).
var npyDTypes = map[string]tensor.DType{
	"|b1": tensor.Bool, "|u1": tensor.Uint8, "<u2": tensor.Uint16, "<u4": tensor.Uint32, "<u8": tensor.Uint64,
	"|i1": tensor.Int8, "<i2": tensor.Int16, "<i4": tensor.Int32, "<i8": tensor.Int64,
	"<f2": tensor.FP16, "<f4": tensor.FP32, "<f8": tensor.FP64,
}

// npyDType returns the datatype of a NumPy type string. A 1-byte type has
// no byte order: NumPy writes '|', other writers '<' or '=', all the same.
func npyDType(descr string) (tensor.DType, bool) {
	if len(descr) == 3 && descr[2] == '1' && strings.ContainsRune("<=|", rune(descr[0])) {
		descr = "|" + descr[1:]
	}
	dt, ok := npyDTypes[descr]
	return dt, ok
}

var (
	npyDescr = regexp.MustCompile(`'descr':\s*'([^']+)'`)
	npyOrder = regexp.MustCompile(`'fortran_order':\s*(True|False)`)
	npyShape = regexp.MustCompile(`'shape':\s*\(([^)]*)\)`)
)

// readNPY reads a NumPy .npy file (format 1.0–3.0, C order, little-endian).
func readNPY(path string) (*tensor.Tensor, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 10 || string(b[:6]) != "\x93NUMPY" {
		return nil, fmt.Errorf("%s: not a .npy file", path)
	}
	var hlen, off int
	switch b[6] {
	case 1:
		hlen, off = int(binary.LittleEndian.Uint16(b[8:])), 10
	case 2, 3:
		if len(b) < 12 {
			return nil, fmt.Errorf("%s: truncated header", path)
		}
		hlen, off = int(binary.LittleEndian.Uint32(b[8:])), 12
	default:
		return nil, fmt.Errorf("%s: unsupported .npy version %d", path, b[6])
	}
	if off+hlen > len(b) {
		return nil, fmt.Errorf("%s: truncated header", path)
	}
	header, data := string(b[off:off+hlen]), b[off+hlen:]
	d, o, s := npyDescr.FindStringSubmatch(header), npyOrder.FindStringSubmatch(header), npyShape.FindStringSubmatch(header)
	if d == nil || o == nil || s == nil {
		return nil, fmt.Errorf("%s: malformed header %q", path, header)
	}
	dt, ok := npyDType(d[1])
	if !ok {
		return nil, fmt.Errorf("%s: unsupported dtype %q", path, d[1])
	}
	if o[1] == "True" {
		return nil, fmt.Errorf("%s: Fortran-order arrays are not supported", path)
	}
	var shape []int64
	for _, f := range strings.Split(s[1], ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: bad shape %q", path, s[1])
		}
		shape = append(shape, n)
	}
	t := &tensor.Tensor{DType: dt, Shape: shape, Data: data}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// readJSON reads a tensor from JSON: a nested array (shape from nesting,
// datatype from the model), or {"datatype": "FP32", "shape": [..], "data": [..]}.
func readJSON(path string, want tensor.DType) (*tensor.Tensor, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var obj struct {
		Datatype string          `json:"datatype"`
		Shape    []int64         `json:"shape"`
		Data     json.RawMessage `json:"data"`
	}
	var nested any
	var shape []int64
	if decodeJSON(b, &obj) == nil && obj.Data != nil {
		if obj.Datatype != "" {
			if want, err = tensor.ParseDType(obj.Datatype); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
		}
		if err := decodeJSON(obj.Data, &nested); err != nil {
			return nil, fmt.Errorf("%s: data: %w", path, err)
		}
		shape = obj.Shape
	} else if err := decodeJSON(b, &nested); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if m, ok := nested.(map[string]any); ok {
		keys := slices.Sorted(maps.Keys(m))
		return nil, fmt.Errorf(`%s: an object with keys %q: want a nested array of values, or {"datatype": "FP32", "shape": [..], "data": [..]}`, path, keys)
	}
	dims := nestedShape(nested)
	var flat []any
	if err := flatten(nested, dims, 0, &flat); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if shape == nil {
		shape = dims
	}
	return fromValues(path, want, shape, flat)
}

// decodeJSON decodes raw, which must hold exactly one JSON value, into v.
// Numbers stay text (json.Number) until the datatype is known: an INT64
// above 2^53 must not pass through a float64.
func decodeJSON(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return err
	}
	end := d.InputOffset()
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("more data after the JSON value that ends at byte %d", end)
	}
	return nil
}

// nestedShape is the shape a nested JSON array has if it is regular: the
// lengths along its first elements.
func nestedShape(v any) []int64 {
	var dims []int64
	for {
		arr, ok := v.([]any)
		if !ok {
			return dims
		}
		dims = append(dims, int64(len(arr)))
		if len(arr) == 0 {
			return dims
		}
		v = arr[0]
	}
}

// flatten appends v's elements to out, checking that v has shape dims at
// every depth (a ragged or mixed-depth array is an error, not a guess).
func flatten(v any, dims []int64, depth int, out *[]any) error {
	arr, isArr := v.([]any)
	if depth == len(dims) {
		if isArr {
			return fmt.Errorf("an array where a value was expected at depth %d (mixed nesting)", depth)
		}
		*out = append(*out, v)
		return nil
	}
	if !isArr {
		return fmt.Errorf("a value where an array of %d was expected at depth %d (mixed nesting)", dims[depth], depth)
	}
	if int64(len(arr)) != dims[depth] {
		return fmt.Errorf("ragged array: %d elements where the first array at depth %d has %d", len(arr), depth, dims[depth])
	}
	for _, e := range arr {
		if err := flatten(e, dims, depth+1, out); err != nil {
			return err
		}
	}
	return nil
}

func fromValues(src string, dt tensor.DType, shape []int64, vals []any) (*tensor.Tensor, error) {
	if n := tensor.NumElements(shape); n != int64(len(vals)) {
		return nil, fmt.Errorf("%s: shape %v needs %d values, got %d", src, shape, n, len(vals))
	}
	if dt == tensor.FP16 || dt == tensor.BF16 {
		return nil, fmt.Errorf("%s: %v from JSON is not supported: use a .npy file", src, dt)
	}
	t := tensor.New("", dt, shape...)
	for i, v := range vals {
		if dt == tensor.Bytes {
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("%s: element %d: want a string for BYTES", src, i)
			}
			t.Strings[i] = []byte(s)
			continue
		}
		var num string
		switch x := v.(type) {
		case json.Number:
			num = x.String()
		case bool:
			num = "0"
			if x {
				num = "1"
			}
		default:
			return nil, fmt.Errorf("%s: element %d: want a number, got %s", src, i, jsonKind(v))
		}
		size := dt.Size()
		p := t.Data[i*size:]
		switch dt {
		case tensor.FP32:
			f, err := strconv.ParseFloat(num, 32)
			if err != nil {
				return nil, fmt.Errorf("%s: element %d: %q is not an FP32 value", src, i, num)
			}
			binary.LittleEndian.PutUint32(p, math.Float32bits(float32(f)))
		case tensor.FP64:
			f, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return nil, fmt.Errorf("%s: element %d: %q is not an FP64 value", src, i, num)
			}
			binary.LittleEndian.PutUint64(p, math.Float64bits(f))
		case tensor.Bool, tensor.Uint8, tensor.Uint16, tensor.Uint32, tensor.Uint64:
			u, err := strconv.ParseUint(num, 10, 8*size)
			if err != nil || dt == tensor.Bool && u > 1 {
				return nil, fmt.Errorf("%s: element %d: %q is not a %v value (an integer in range)", src, i, num, dt)
			}
			for k := range size {
				p[k] = byte(u >> (8 * k))
			}
		default: // signed integers
			n, err := strconv.ParseInt(num, 10, 8*size)
			if err != nil {
				return nil, fmt.Errorf("%s: element %d: %q is not a %v value (an integer in range)", src, i, num, dt)
			}
			for k := range size {
				p[k] = byte(uint64(n) >> (8 * k))
			}
		}
	}
	return t, nil
}

// readTensorFile reads name=path input specs by extension.
func readTensorFile(path string, want tensor.DType) (*tensor.Tensor, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".npy":
		return readNPY(path)
	case ".json":
		return readJSON(path, want)
	}
	return nil, fmt.Errorf("%s: want a .npy or .json file", path)
}

// jsonKind names what a decoded JSON value is, as a user wrote it.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	default:
		return fmt.Sprintf("%T", v)
	}
}
