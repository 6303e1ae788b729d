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

// MaxHeader is the largest JSON header Parse accepts (100 MB, as the
// reference implementation).
const MaxHeader = 100 << 20

var dtypes = map[string]tensor.DType{
	"BOOL": tensor.Bool, "U8": tensor.Uint8, "U16": tensor.Uint16, "U32": tensor.Uint32, "U64": tensor.Uint64,
	"I8": tensor.Int8, "I16": tensor.Int16, "I32": tensor.Int32, "I64": tensor.Int64,
	"F16": tensor.FP16, "BF16": tensor.BF16, "F32": tensor.FP32, "F64": tensor.FP64,
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

// parseEntry reads a tensor's header entry by its exact keys, ignoring
// others, as the reference reader does (encoding/json alone would also take
// "DTYPE" for "dtype").
func parseEntry(msg json.RawMessage) (entry, error) {
	var e entry
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(msg, &fields); err != nil {
		return e, err
	}
	for key, dst := range map[string]any{"dtype": &e.DType, "shape": &e.Shape, "data_offsets": &e.DataOffsets} {
		v, ok := fields[key]
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, dst); err != nil {
			return e, fmt.Errorf("%s: %w", key, err)
		}
	}
	return e, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("safetensors: %w: "+format, append([]any{loaders.ErrInvalidModel}, args...)...)
}

// Parse checks and indexes a SafeTensors file held in b: the header length
// and JSON, every dtype and shape, and that each tensor's offsets lie in
// the data, match its size and overlap no other. Errors wrap
// loaders.ErrInvalidModel.
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
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &raw); err != nil {
		return nil, invalid("header: %v", err)
	}
	f := &File{Tensors: make(map[string]Info, len(raw)), data: b[8+n:]}
	type span struct {
		name       string
		begin, end int64
	}
	var spans []span
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return nil, invalid("__metadata__: %v", err)
			}
			continue
		}
		e, err := parseEntry(msg)
		if err != nil {
			return nil, invalid("tensor %q: %v", name, err)
		}
		dt, ok := dtypes[e.DType]
		if !ok {
			return nil, invalid("tensor %q: unknown dtype %q", name, e.DType)
		}
		if e.Shape == nil {
			e.Shape = []int64{}
		}
		elems := tensor.NumElements(e.Shape)
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
	for i := 1; i < len(spans); i++ {
		if spans[i].begin < spans[i-1].end {
			return nil, invalid("tensors %q and %q overlap", spans[i-1].name, spans[i].name)
		}
	}
	return f, nil
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
