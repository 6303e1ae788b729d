package main

import (
	"bytes"
	"encoding/base64"
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
// no byte order: NumPy writes '|', other writers '<', '>' or '=', all the
// same. '=' (and '|' or nothing on a wider type) is the reading machine's order (numpy.dtype's meaning), which is
// little-endian on every platform the node builds for.
func npyDType(descr string) (tensor.DType, bool) {
	if len(descr) == 2 { // no byte order: numpy.dtype("f4") is native
		descr = "=" + descr
	}
	if len(descr) == 3 && descr[2] == '1' && strings.ContainsRune("<>=|", rune(descr[0])) {
		descr = "|" + descr[1:]
	} else if len(descr) == 3 && (descr[0] == '=' || descr[0] == '|') {
		descr = "<" + descr[1:]
	}
	dt, ok := npyDTypes[descr]
	return dt, ok
}

// npyUnsupported says why a NumPy type string is refused.
func npyUnsupported(descr string) string {
	if len(descr) == 3 && descr[0] == '>' {
		if _, ok := npyDTypes["<"+descr[1:]]; ok {
			return fmt.Sprintf("big-endian dtype %q is not supported: save it little-endian (arr.astype('<%s'))", descr, descr[1:])
		}
	}
	return fmt.Sprintf("unsupported dtype %q: want bool (b1), int (i1, i2, i4, i8), uint (u1, u2, u4, u8) or float (f2, f4, f8), little-endian", descr)
}

// The header is a Python dict literal; NumPy writes single quotes, but
// reads double-quoted keys and strings too (ast.literal_eval).
var (
	npyDescr = regexp.MustCompile(`['"]descr['"]:\s*(?:'([^']+)'|"([^"]+)")`)
	npyOrder = regexp.MustCompile(`['"]fortran_order['"]:\s*(True|False)`)
	npyShape = regexp.MustCompile(`['"]shape['"]:\s*\(([^)]*)\)`)
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
	descr := d[1] + d[2]
	dt, ok := npyDType(descr)
	if !ok {
		return nil, fmt.Errorf("%s: %s", path, npyUnsupported(descr))
	}
	if o[1] == "True" {
		return nil, fmt.Errorf("%s: Fortran-order arrays are not supported", path)
	}
	var shape []int64
	for _, f := range strings.Split(s[1], ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		// NumPy under Python 2 wrote long dimensions as 3L.
		n, err := strconv.ParseInt(strings.TrimSuffix(f, "L"), 10, 64)
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
// datatype want, the model's; Invalid for an input the model does not list:
// guessDType), or {"datatype": "FP32", "shape": [..], "data": [..]}.
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
	b = quoteNonFinite(b)
	var nested any
	var shape []int64
	objErr := decodeJSON(b, &obj)
	if objErr == nil && obj.Data != nil {
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
		if _, ok := m["data"]; ok && objErr != nil { // "shape": "2,3", "datatype": 5
			return nil, fmt.Errorf(`%s: %w (want {"datatype": "FP32", "shape": [..], "data": [..]})`, path, objErr)
		}
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
	if want == tensor.Invalid {
		want = guessDType(flat)
	}
	return fromValues(path, want, shape, flat)
}

// quoteNonFinite turns the bare NaN, Infinity and -Infinity that Python's
// json.dumps writes (not JSON, which has no spelling for them) into the
// strings "NaN", "Infinity" and "-Infinity" that --json prints and that
// fromValues reads as floats. Outside strings, JSON has no other token
// that starts with N, I or -I.
func quoteNonFinite(b []byte) []byte {
	var out []byte
	inString, escaped, last := false, false, 0
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		case c == '"':
			inString = true
			continue
		}
		for _, tok := range []string{"NaN", "Infinity", "-Infinity"} {
			if bytes.HasPrefix(b[i:], []byte(tok)) {
				out = append(append(append(append(out, b[last:i]...), '"'), tok...), '"')
				i += len(tok) - 1
				last = i + 1
				break
			}
		}
	}
	if out == nil {
		return b
	}
	return append(out, b[last:]...)
}

// decodeJSON decodes raw, which must hold exactly one JSON value, into v.
// Numbers stay text (json.Number) until the datatype is known: an INT64
// above 2^53 must not pass through a float64.
func decodeJSON(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("no JSON value (the file is empty or blank)")
		}
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
	n := tensor.NumElements(shape)
	if n < 0 {
		return nil, fmt.Errorf("%s: shape %v: want dimensions of 0 or more (no -1: the data's size is the shape) whose product fits an int64", src, shape)
	}
	if n != int64(len(vals)) {
		return nil, fmt.Errorf("%s: shape %v needs %d values, got %d", src, shape, n, len(vals))
	}
	t := tensor.New("", dt, shape...)
	for i, v := range vals {
		if dt == tensor.Bytes {
			b, err := bytesValue(v)
			if err != nil {
				return nil, fmt.Errorf("%s: element %d: %w", src, i, err)
			}
			t.Strings[i] = b
			continue
		}
		var num string
		switch x := v.(type) {
		case json.Number:
			num = x.String()
		case string: // "NaN", "Infinity", "-Infinity", as --json prints them
			if f, err := strconv.ParseFloat(x, 64); err == nil && (math.IsNaN(f) || math.IsInf(f, 0)) && isFloat(dt) {
				num = x
			} else {
				return nil, fmt.Errorf("%s: element %d: want a number, got %s", src, i, jsonKind(v))
			}
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
		case tensor.FP16, tensor.BF16:
			f, err := strconv.ParseFloat(num, 64)
			h := toHalf(f, dt)
			if err == nil && !math.IsInf(f, 0) && h&0x7fff == toHalf(math.Inf(1), dt) {
				err = strconv.ErrRange // finite, but past the type's largest value
			}
			if err != nil {
				return nil, fmt.Errorf("%s: element %d: %q is not an %v value", src, i, num, dt)
			}
			binary.LittleEndian.PutUint16(p, h)
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

// guessDType is the datatype of JSON values whose input the model does not
// describe: BYTES when the first is a string other than a non-finite float
// ("NaN"...) or a {"b64": ..} object, FP32 otherwise.
func guessDType(vals []any) tensor.DType {
	if len(vals) > 0 {
		switch x := vals[0].(type) {
		case map[string]any:
			return tensor.Bytes
		case string:
			if f, err := strconv.ParseFloat(x, 64); err != nil || !math.IsNaN(f) && !math.IsInf(f, 0) {
				return tensor.Bytes
			}
		}
	}
	return tensor.FP32
}

// bytesValue reads a BYTES element: a string (its UTF-8 bytes), or
// {"b64": "<base64>"} as --json prints bytes that are not UTF-8.
func bytesValue(v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return []byte(x), nil
	case map[string]any:
		if s, ok := x["b64"].(string); ok && len(x) == 1 {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return nil, fmt.Errorf("b64: %w", err)
			}
			return b, nil
		}
	}
	return nil, fmt.Errorf(`want a string or {"b64": "<base64>"} for BYTES, got %s`, jsonKind(v))
}

func isFloat(dt tensor.DType) bool {
	return dt == tensor.FP16 || dt == tensor.BF16 || dt == tensor.FP32 || dt == tensor.FP64
}

// toHalf rounds f to the nearest FP16 or BF16 value (ties to even, in one
// rounding from float64) and returns its bits.
func toHalf(f float64, dt tensor.DType) uint16 {
	mant, bias := 10, 15 // FP16: 5 exponent bits, 10 fraction bits
	if dt == tensor.BF16 {
		mant, bias = 7, 127 // BF16: 8 exponent bits, 7 fraction bits
	}
	expMax := 1<<(15-mant) - 1
	var sign uint16
	if math.Signbit(f) {
		sign = 0x8000
	}
	inf := sign | uint16(expMax)<<mant
	switch {
	case math.IsNaN(f):
		return inf | 1<<(mant-1)
	case math.IsInf(f, 0):
		return inf
	}
	a := math.Abs(f)
	if a < math.Ldexp(1, 1-bias) { // subnormal: multiples of 2^(1-bias-mant); rounding up to 1<<mant is the smallest normal
		return sign | uint16(math.RoundToEven(math.Ldexp(a, bias-1+mant)))
	}
	_, e := math.Frexp(a)
	e-- // a = 1.x × 2^e
	m := math.RoundToEven(math.Ldexp(a, mant-e))
	if m == float64(int(1)<<(mant+1)) {
		m, e = m/2, e+1
	}
	if e+bias >= expMax {
		return inf
	}
	return sign | uint16(e+bias)<<mant | (uint16(m) - 1<<mant)
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
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	default:
		return fmt.Sprintf("%T", v)
	}
}
