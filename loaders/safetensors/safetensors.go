// Package safetensors reads and writes the SafeTensors format in pure Go:
// an 8-byte little-endian header length, a JSON header mapping each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
// "__metadata__" map of strings), then the data, offsets relative to its
// start.
//
// It imports no native code and nothing of host/, so a WebAssembly guest
// (guests/examples/safetensors-mlp) uses it as well as the node.
package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"unicode/utf8"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// MaxHeader is the largest JSON header Parse accepts: 100,000,000 bytes,
// the reference implementation's limit (100 << 20 let through headers the
// reference refuses).
const MaxHeader = 100_000_000

var dtypes = map[string]tensor.DType{
	"BOOL": tensor.Bool, "U8": tensor.Uint8, "U16": tensor.Uint16, "U32": tensor.Uint32, "U64": tensor.Uint64,
	"I8": tensor.Int8, "I16": tensor.Int16, "I32": tensor.Int32, "I64": tensor.Int64,
	"F16": tensor.FP16, "BF16": tensor.BF16, "F32": tensor.FP32, "F64": tensor.FP64,
}

// unsupported are the reference's dtypes that no tensor.DType holds: a file
// of them is valid SafeTensors that this node cannot serve, not a corrupt
// one.
var unsupported = map[string]bool{
	"F8_E4M3": true, "F8_E5M2": true, "F8_E8M0": true, "F4": true, "F6_E2M3": true, "F6_E3M2": true, "C64": true,
}

func dtypeName(d tensor.DType) (string, bool) {
	for k, v := range dtypes {
		if v == d {
			return k, true
		}
	}
	return "", false
}

// Info describes one tensor of a file.
type Info struct {
	DType tensor.DType
	Shape []int64
	// Begin and End are the data offsets, relative to the data section.
	Begin, End int64
}

// File is a parsed SafeTensors file. Its tensors alias the bytes given to
// Parse.
type File struct {
	Tensors  map[string]Info
	Metadata map[string]string
	data     []byte
}

type entry struct {
	DType       string  `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// members returns the members of the JSON object msg, in order, and
// refuses a name given twice: encoding/json keeps the last silently, so a
// file could mean one thing to a reader that keeps the first and another
// here (the reference reader refuses a repeated field of an entry).
func members(msg []byte) (keys []string, values []json.RawMessage, err error) {
	dec := json.NewDecoder(bytes.NewReader(msg))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nil, fmt.Errorf("want a JSON object, got %v", tok)
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		key := tok.(string) // an object's member starts with its name
		if seen[key] {
			return nil, nil, fmt.Errorf("%q appears twice", key)
		}
		seen[key] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		keys, values = append(keys, key), append(values, v)
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, nil, err
	}
	if tok, err := dec.Token(); err != io.EOF {
		return nil, nil, fmt.Errorf("data after the object: %v %v", tok, err)
	}
	return keys, values, nil
}

// parseEntry reads a tensor's header entry by its exact keys, ignoring
// others, as the reference reader does (encoding/json alone would also take
// "DTYPE" for "dtype"); like it, it requires all three.
func parseEntry(msg json.RawMessage) (entry, error) {
	var e entry
	keys, values, err := members(msg)
	if err != nil {
		return e, err
	}
	dsts := map[string]any{"dtype": &e.DType, "shape": &e.Shape, "data_offsets": &e.DataOffsets}
	for i, key := range keys {
		dst, ok := dsts[key]
		if !ok {
			continue
		}
		delete(dsts, key)
		if string(values[i]) == "null" {
			return e, fmt.Errorf("%s is null", key)
		}
		if err := json.Unmarshal(values[i], dst); err != nil {
			return e, fmt.Errorf("%s: %w", key, err)
		}
	}
	for _, key := range []string{"dtype", "shape", "data_offsets"} {
		if _, missing := dsts[key]; missing {
			return e, fmt.Errorf("no %q", key)
		}
	}
	return e, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("safetensors: %w: "+format, append([]any{loaders.ErrInvalidModel}, args...)...)
}

// Parse checks and indexes a SafeTensors file held in b: the header length
// and JSON, every dtype and shape, and that each tensor's offsets lie in
// the data and match its size, and that the tensors, in offset order,
// cover the data exactly: from 0 to its end, neither overlapping nor
// leaving a gap (as the reference reader requires: a file with bytes no
// tensor owns is refused there, so a truncated-and-padded or doctored file
// would load here only). Errors wrap loaders.ErrInvalidModel.
func Parse(b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, invalid("%d bytes, no header length", len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > MaxHeader || n > uint64(len(b)-8) {
		return nil, invalid("header of %d bytes in a %d-byte file", n, len(b))
	}
	if !utf8.Valid(b[8 : 8+n]) {
		return nil, invalid("header is not UTF-8")
	}
	names, raw, err := members(b[8 : 8+n])
	if err != nil {
		return nil, invalid("header: %v", err)
	}
	f := &File{Tensors: make(map[string]Info, len(raw)), data: b[8+n:]}
	type span struct {
		name       string
		begin, end int64
	}
	var spans []span
	for i, name := range names {
		msg := raw[i]
		if name == "__metadata__" {
			if err := parseMetadata(msg, &f.Metadata); err != nil {
				return nil, invalid("__metadata__: %v", err)
			}
			continue
		}
		e, err := parseEntry(msg)
		if err != nil {
			return nil, invalid("tensor %q: %v", name, err)
		}
		dt, ok := dtypes[e.DType]
		if !ok && unsupported[e.DType] {
			return nil, invalid("tensor %q: dtype %s is not supported (KServe has no such datatype)", name, e.DType)
		}
		if !ok {
			return nil, invalid("tensor %q: unknown dtype %q", name, e.DType)
		}
		elems := numElements(e.Shape)
		if elems < 0 || elems > math.MaxInt64/int64(dt.Size()) {
			return nil, invalid("tensor %q: bad shape %v", name, e.Shape)
		}
		if len(e.DataOffsets) != 2 {
			return nil, invalid("tensor %q: data_offsets %v, want [begin, end]", name, e.DataOffsets)
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin < 0 || end < begin || end > int64(len(f.data)) {
			return nil, invalid("tensor %q: data_offsets [%d, %d] outside %d data bytes", name, begin, end, len(f.data))
		}
		if end-begin != elems*int64(dt.Size()) {
			return nil, invalid("tensor %q: %d data bytes for %v of shape %v (want %d)", name, end-begin, dt, e.Shape, elems*int64(dt.Size()))
		}
		f.Tensors[name] = Info{DType: dt, Shape: e.Shape, Begin: begin, End: end}
		spans = append(spans, span{name, begin, end})
	}
	// By begin, then end: an empty tensor may sit at the offset where the
	// next one starts (the reference writer puts it there).
	sort.Slice(spans, func(i, j int) bool {
		a, b := spans[i], spans[j]
		return a.begin < b.begin || a.begin == b.begin && (a.end < b.end || a.end == b.end && a.name < b.name)
	})
	var end int64 // where the tensors so far end
	for i, s := range spans {
		switch {
		case s.begin < end:
			return nil, invalid("tensors %q and %q overlap", spans[i-1].name, s.name)
		case s.begin > end:
			return nil, invalid("tensor %q starts at %d: data bytes [%d, %d) belong to no tensor", s.name, s.begin, end, s.begin)
		}
		end = s.end
	}
	if end != int64(len(f.data)) {
		return nil, invalid("the tensors end at %d of %d data bytes: the rest belongs to no tensor", end, len(f.data))
	}
	return f, nil
}

// numElements is the product of shape, -1 when a dimension is negative or
// the product overflows on the way, dimension by dimension, as the
// reference reader computes it: it refuses [2^62, 4, 0] (ValidationOverflow)
// although tensor.NumElements counts 0 elements there.
func numElements(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		if d < 0 || d != 0 && n > math.MaxInt64/d {
			return -1
		}
		n *= d
	}
	return n
}

// parseMetadata reads the "__metadata__" map of strings (null: none).
func parseMetadata(msg json.RawMessage, dst *map[string]string) error {
	if string(msg) == "null" {
		return nil
	}
	keys, values, err := members(msg)
	if err != nil {
		return err
	}
	m := make(map[string]string, len(keys))
	for i, k := range keys {
		// encoding/json reads null into a string as "": the reference
		// reader (a map of strings) refuses it.
		if string(values[i]) == "null" {
			return fmt.Errorf("%q is null, want a string", k)
		}
		var v string
		if err := json.Unmarshal(values[i], &v); err != nil {
			return fmt.Errorf("%q: %w", k, err)
		}
		m[k] = v
	}
	*dst = m
	return nil
}

// Names lists the tensors in data order.
func (f *File) Names() []string {
	names := make([]string, 0, len(f.Tensors))
	for k := range f.Tensors {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int {
		ta, tb := f.Tensors[a], f.Tensors[b]
		return cmp.Or(cmp.Compare(ta.Begin, tb.Begin), cmp.Compare(ta.End, tb.End), cmp.Compare(a, b))
	})
	return names
}

// Tensor returns the named tensor; its Data aliases the parsed bytes.
func (f *File) Tensor(name string) (*tensor.Tensor, error) {
	in, ok := f.Tensors[name]
	if !ok {
		return nil, invalid("no tensor %q", name)
	}
	return &tensor.Tensor{Name: name, DType: in.DType, Shape: slices.Clone(in.Shape), Data: f.data[in.Begin:in.End:in.End]}, nil
}

// Write writes ts (fixed-width, distinct names) and metadata as a
// SafeTensors file, data in the order given.
func Write(w io.Writer, ts []*tensor.Tensor, metadata map[string]string) error {
	header := make(map[string]any, len(ts)+1)
	if len(metadata) > 0 {
		for k, v := range metadata {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return fmt.Errorf("safetensors: metadata %q: %q: not UTF-8", k, v)
			}
		}
		header["__metadata__"] = metadata
	}
	var off int64
	for _, t := range ts {
		name, ok := dtypeName(t.DType)
		if !ok {
			return fmt.Errorf("safetensors: tensor %q: %v cannot be stored", t.Name, t.DType)
		}
		if err := t.Validate(); err != nil {
			return fmt.Errorf("safetensors: %w", err)
		}
		if t.Name == "__metadata__" {
			return fmt.Errorf("safetensors: a tensor cannot be named __metadata__")
		}
		// encoding/json would write U+FFFD for each bad byte: the file
		// would name the tensor otherwise, two names perhaps alike.
		if !utf8.ValidString(t.Name) {
			return fmt.Errorf("safetensors: tensor name %q is not UTF-8", t.Name)
		}
		if _, dup := header[t.Name]; dup {
			return fmt.Errorf("safetensors: duplicate tensor %q", t.Name)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		header[t.Name] = entry{DType: name, Shape: shape, DataOffsets: []int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	js, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("safetensors: header: %w", err)
	}
	// Pad the header with spaces so the data starts 8-aligned.
	js = append(js, bytes.Repeat([]byte{' '}, (8-len(js)%8)%8)...)
	var buf bytes.Buffer
	buf.Grow(8 + len(js) + int(off))
	buf.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(js))))
	buf.Write(js)
	for _, t := range ts {
		buf.Write(t.Data)
	}
	_, err = w.Write(buf.Bytes())
	return err
}
