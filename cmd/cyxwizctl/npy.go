package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
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
	dt, ok := npyDTypes[d[1]]
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
	var flat []any
	var shape []int64
	if json.Unmarshal(b, &obj) == nil && obj.Data != nil {
		if obj.Datatype != "" {
			if want, err = tensor.ParseDType(obj.Datatype); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
		}
		var nested any
		if err := json.Unmarshal(obj.Data, &nested); err != nil {
			return nil, fmt.Errorf("%s: data: %w", path, err)
		}
		flat, _ = flatten(nested, 0, nil)
		shape = obj.Shape
	} else {
		var nested any
		if err := json.Unmarshal(b, &nested); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var dims []int64
		flat, dims = flatten(nested, 0, nil)
		shape = dims
	}
	return fromValues(path, want, shape, flat)
}

// flatten walks a nested JSON array; dims records the first length seen at each depth.
func flatten(v any, depth int, dims []int64) ([]any, []int64) {
	arr, ok := v.([]any)
	if !ok {
		return []any{v}, dims
	}
	if len(dims) == depth {
		dims = append(dims, int64(len(arr)))
	}
	var out []any
	for _, e := range arr {
		var f []any
		f, dims = flatten(e, depth+1, dims)
		out = append(out, f...)
	}
	return out, dims
}

func fromValues(src string, dt tensor.DType, shape []int64, vals []any) (*tensor.Tensor, error) {
	if n := tensor.NumElements(shape); n != int64(len(vals)) {
		return nil, fmt.Errorf("%s: shape %v needs %d values, got %d (ragged array?)", src, shape, n, len(vals))
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
		var f float64
		switch x := v.(type) {
		case float64:
			f = x
		case bool:
			if x {
				f = 1
			}
		default:
			return nil, fmt.Errorf("%s: element %d: want a number, got %T", src, i, v)
		}
		size := dt.Size()
		p := t.Data[i*size:]
		switch dt {
		case tensor.FP32:
			binary.LittleEndian.PutUint32(p, math.Float32bits(float32(f)))
		case tensor.FP64:
			binary.LittleEndian.PutUint64(p, math.Float64bits(f))
		case tensor.FP16, tensor.BF16:
			return nil, fmt.Errorf("%s: %v from JSON is not supported: use a .npy file", src, dt)
		default:
			var u uint64
			if f < 0 {
				u = uint64(int64(f))
			} else {
				u = uint64(f)
			}
			for k := range size {
				p[k] = byte(u >> (8 * k))
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
