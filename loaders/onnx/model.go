package onnx

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	ort "github.com/yalue/onnxruntime_go"
)

// Model is an ONNX model loaded into an ONNX Runtime session. Infer is safe
// for concurrent use: ORT sessions run concurrently.
type Model struct {
	path      string
	info      loaders.Info
	inputs    []inputSpec  // in session order
	outputs   []outputSpec // in session order
	inByName  map[string]int
	outByName map[string]int
	all       []int // every output index, for Infer with no names
	// sameDims are groups of input dimensions that share the dim_param a
	// pre-allocated output takes its size from; each request must give
	// them one size (see namedDimGroups).
	sameDims [][]inputAxis

	// mu guards session: Infer holds it shared for the whole run, Close
	// exclusively, so a session is never destroyed under a running Infer.
	mu      sync.RWMutex
	session *ort.DynamicAdvancedSession // nil once closed
	runOpts chan *ort.RunOptions        // free list, see run; drained by Close
}

type inputSpec struct {
	loaders.TensorSpec
	ortType ort.TensorElementDataType
}

type outputSpec struct {
	loaders.TensorSpec
	ortType ort.TensorElementDataType
	// prealloc: this package allocates the output before each run instead
	// of ORT (see plan); dims says where its dimensions come from.
	prealloc bool
	dims     []dimSource
	// alias is the index of the graph input this output is (a graph output
	// may name a graph input: a pass-through value), or -1. ORT hands such
	// an output back by replacing the fetch with the feed, so a
	// pre-allocated buffer is never written; Infer copies the input instead.
	alias int
}

// dimSource is one dimension of a pre-allocated output: a fixed size, or
// when input >= 0, the size of dimension axis of that input.
type dimSource struct {
	size        int64
	input, axis int
}

// inputAxis is dimension axis of input number input.
type inputAxis struct{ input, axis int }

// Info describes the model. The caller may modify the copy it gets.
func (m *Model) Info() loaders.Info {
	info := m.info
	info.Inputs = cloneSpecs(info.Inputs)
	info.Outputs = cloneSpecs(info.Outputs)
	info.Providers = slices.Clone(info.Providers)
	return info
}

func cloneSpecs(s []loaders.TensorSpec) []loaders.TensorSpec {
	out := slices.Clone(s)
	for i := range out {
		out[i].Shape = slices.Clone(out[i].Shape)
	}
	return out
}

// Infer runs the model. Every model input must be given exactly once, with
// the model's datatype, rank and fixed dimensions; names selects outputs
// (all, in Info order, when empty). Inputs that do not fit the model, and
// unknown output names, give an error wrapping loaders.ErrInvalidInput. A
// done ctx stops the run (ORT checks between nodes) and gives ctx.Err().
func (m *Model) Infer(ctx context.Context, inputs []*tensor.Tensor, names []string) ([]*tensor.Tensor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.session == nil {
		return nil, fmt.Errorf("onnx: infer %s: %w", m.path, loaders.ErrClosed)
	}
	want, err := m.selectOutputs(names)
	if err != nil {
		return nil, err
	}
	ordered := make([]*tensor.Tensor, len(m.inputs))
	if err := m.bind(inputs, ordered); err != nil {
		return nil, err
	}

	// One slice for the ORT values: inputs first, then outputs. Nil outputs
	// are allocated by ORT during the run.
	vals := make([]ort.Value, len(m.inputs)+len(m.outputs))
	ins, outs := vals[:len(m.inputs):len(m.inputs)], vals[len(m.inputs):]
	ranOK := false
	defer func() { release(vals, ranOK) }()
	for i, t := range ordered {
		if t.DType == tensor.Bool {
			t = normBool(t)
			ordered[i] = t
		}
		if ins[i], err = newInput(t, m.inputs[i].ortType); err != nil {
			return nil, fmt.Errorf("onnx: input %q: %w", t.Name, err)
		}
	}
	for i := range m.outputs {
		if o := &m.outputs[i]; o.prealloc {
			if outs[i], err = o.alloc(ordered); err != nil {
				return nil, fmt.Errorf("onnx: output %q: %w", o.Name, err)
			}
		}
	}

	if err := m.run(ctx, ins, outs); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("onnx: run: %w", ctxErr)
		}
		if aboutInput(err) {
			return nil, fmt.Errorf("onnx: %w: %w", loaders.ErrInvalidInput, err)
		}
		return nil, fmt.Errorf("onnx: run: %w", err)
	}
	ranOK = true

	res := make([]*tensor.Tensor, len(want))
	for j, i := range want {
		if a := m.outputs[i].alias; a >= 0 {
			res[j] = aliasOf(ordered[a], m.outputs[i].Name)
			continue
		}
		if res[j], err = m.outputs[i].tensor(outs[i]); err != nil {
			return nil, fmt.Errorf("onnx: output %q: %w", m.outputs[i].Name, err)
		}
	}
	return res, nil
}

// normBool returns t with every BOOL element 0 or 1 (a copy when some byte
// is neither). ORT reads BOOL elements as C++ bool, where any other byte is
// undefined: Cast gave 2 for a true of 0x02, Not gave 3.
func normBool(t *tensor.Tensor) *tensor.Tensor {
	if !slices.ContainsFunc(t.Data, func(b byte) bool { return b > 1 }) {
		return t
	}
	c := *t
	c.Data = make([]byte, len(t.Data))
	for j, b := range t.Data {
		if b != 0 {
			c.Data[j] = 1
		}
	}
	return &c
}

// aliasOf is the value of an output that is the graph input in.
func aliasOf(in *tensor.Tensor, name string) *tensor.Tensor {
	t := in.Clone()
	t.Name = name
	if t.Shape == nil {
		t.Shape = []int64{}
	}
	if t.DType != tensor.Bytes && t.Data == nil {
		t.Data = []byte{}
	}
	return t
}

// ReleasesInputs reports that Infer keeps no reference to its inputs once it
// has returned (ORT values over their memory are destroyed after each run),
// so the engine may reuse batch buffers (engine.InputReleaser).
func (m *Model) ReleasesInputs() bool { return true }

// run runs the session, with a RunOptions that ctx can terminate when ctx
// can be cancelled at all. RunOptions are reused from a small free list
// (creating one costs about a microsecond); not a sync.Pool, which would
// drop C objects on the floor at each GC. One that was terminated is
// destroyed, not reused.
func (m *Model) run(ctx context.Context, ins, outs []ort.Value) error {
	if ctx.Done() == nil {
		return m.session.Run(ins, outs)
	}
	var ro *ort.RunOptions
	select {
	case ro = <-m.runOpts:
	default:
		var err error
		if ro, err = ort.NewRunOptions(); err != nil {
			return fmt.Errorf("run options: %w", err)
		}
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		ro.Terminate()
		close(fired)
	})
	err := m.session.RunWithOptions(ins, outs, ro)
	if !stop() {
		<-fired // Terminate must be done with ro before it is reused
		ro.Destroy()
		return err
	}
	select {
	case m.runOpts <- ro:
	default:
		ro.Destroy()
	}
	return err
}

// ortInputErrors are the ORT run errors caused by the inputs themselves,
// such as "Got invalid dimensions for input: x for the following indices",
// the kernels' own refusals of a shape that the model's dynamic
// dimensions let through ("Non-zero status code returned while running
// Conv node. ... Status Message: Invalid input shape: {48,0}"), and of
// index values ("indices element out of data bounds, idx=4 must be within
// the inclusive range [-4,3]").
var ortInputErrors = []string{
	"for input",
	"Unexpected input data type",
	"Invalid input name",
	"Missing Input",
	"Invalid input shape",
	"Incompatible dimensions",
	"Attempting to broadcast an axis by a dimension other than 1",
	"Can broadcast 0 by 0 or 1",
	"cannot be reshaped to the requested shape",
	// Dynamic dimensions that do not fit the model's weights.
	"MatMul dimension mismatch",
	"Non concat axis dimensions must match",
	"Input channels C is not equal to kernel channels",
	"invalid expand shape",
	"should not be greater than specified axis dim value",
	// Index values out of range: a token id past an embedding table
	// (Gather), and the other gather and scatter kernels.
	"indices element out of data bounds",
	"Out of range value in index tensor",
	"invalid index found",
	"invalid indice found",
}

func aboutInput(err error) bool {
	msg := err.Error()
	for _, s := range ortInputErrors {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// release destroys the ORT values of one Infer. After a failed run,
// onnxruntime_go v1.27.0 may leave a typed nil in an output (e.g.
// (*ort.Tensor[float32])(nil) when it could not convert an ORT-allocated
// value), whose Destroy would dereference nil.
func release(vals []ort.Value, ranOK bool) {
	for _, v := range vals {
		if v == nil || (!ranOK && reflect.ValueOf(v).IsNil()) {
			continue
		}
		v.Destroy()
	}
}

// selectOutputs returns the indexes of the named outputs, or of all of them.
func (m *Model) selectOutputs(names []string) ([]int, error) {
	if len(names) == 0 {
		return m.all, nil
	}
	idx := make([]int, len(names))
	for j, name := range names {
		i, ok := m.outByName[name]
		if !ok {
			return nil, fmt.Errorf("onnx: %w: unknown output %q (model outputs: %s)", loaders.ErrInvalidInput, name, specNames(m.info.Outputs))
		}
		if slices.Contains(idx[:j], i) {
			return nil, fmt.Errorf("onnx: %w: output %q requested twice", loaders.ErrInvalidInput, name)
		}
		idx[j] = i
	}
	return idx, nil
}

// bind checks inputs against the model and puts them in session order.
func (m *Model) bind(inputs []*tensor.Tensor, ordered []*tensor.Tensor) error {
	for _, t := range inputs {
		if t == nil {
			return fmt.Errorf("onnx: %w: nil input tensor", loaders.ErrInvalidInput)
		}
		i, ok := m.inByName[t.Name]
		if !ok {
			return fmt.Errorf("onnx: %w: unknown input %q (model inputs: %s)", loaders.ErrInvalidInput, t.Name, specNames(m.info.Inputs))
		}
		if ordered[i] != nil {
			return fmt.Errorf("onnx: %w: input %q given twice", loaders.ErrInvalidInput, t.Name)
		}
		if err := m.inputs[i].check(t); err != nil {
			return fmt.Errorf("onnx: %w: %w", loaders.ErrInvalidInput, err)
		}
		ordered[i] = t
	}
	for i, t := range ordered {
		if t == nil {
			return fmt.Errorf("onnx: %w: missing input %q (model inputs: %s)", loaders.ErrInvalidInput, m.inputs[i].Name, specNames(m.info.Inputs))
		}
	}
	for _, group := range m.sameDims {
		a := group[0]
		for _, b := range group[1:] {
			x, y := ordered[a.input], ordered[b.input]
			if x.Shape[a.axis] != y.Shape[b.axis] {
				return fmt.Errorf("onnx: %w: input %q has %d at dimension %d and input %q has %d at dimension %d, which the model declares the same size", loaders.ErrInvalidInput,
					x.Name, x.Shape[a.axis], a.axis, y.Name, y.Shape[b.axis], b.axis)
			}
		}
	}
	return nil
}

// check tells whether t fits the input, in words a client can act on.
func (s *inputSpec) check(t *tensor.Tensor) error {
	if t.DType != s.DType {
		return fmt.Errorf("input %q: datatype %v, model wants %v", t.Name, t.DType, s.DType)
	}
	if s.Shape != nil { // nil: the model declares no shape
		if len(t.Shape) != len(s.Shape) {
			return fmt.Errorf("input %q: shape %v has rank %d, model wants rank %d %v", t.Name, t.Shape, len(t.Shape), len(s.Shape), s.Shape)
		}
		for k, d := range s.Shape {
			if d >= 0 && t.Shape[k] != d {
				return fmt.Errorf("input %q: shape %v has %d at dimension %d, model wants %d (shape %v)", t.Name, t.Shape, t.Shape[k], k, d, s.Shape)
			}
		}
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("input %q: %w", t.Name, err)
	}
	if t.DType == tensor.Bytes {
		for i, b := range t.Strings {
			if bytes.IndexByte(b, 0) >= 0 {
				return fmt.Errorf("input %q: BYTES element %d contains a NUL byte, which ONNX Runtime string tensors cannot hold", t.Name, i)
			}
		}
	}
	return nil
}

func specNames(specs []loaders.TensorSpec) string {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

// newInput wraps t as an ORT value. Fixed-width data is shared, not copied.
func newInput(t *tensor.Tensor, typ ort.TensorElementDataType) (ort.Value, error) {
	if t.DType == tensor.Bytes {
		return newStrings(t)
	}
	if len(t.Shape) > 0 && len(t.Data) > 0 {
		v, err := ort.NewCustomDataTensor(ort.Shape(t.Shape), t.Data, typ)
		if err != nil {
			return nil, err
		}
		return v, nil
	}
	c := codecs[t.DType]
	if c.value == nil {
		return nil, fmt.Errorf("%w: rank-0 and empty %v tensors are not supported by onnxruntime_go v1.27.0", loaders.ErrInvalidInput, t.DType)
	}
	return c.value(t.Shape, t.Data)
}

func newStrings(t *tensor.Tensor) (ort.Value, error) {
	if len(t.Shape) == 0 {
		return nil, fmt.Errorf("%w: rank-0 BYTES tensors are not supported by onnxruntime_go v1.27.0", loaders.ErrInvalidInput)
	}
	v, err := ort.NewStringTensor(ort.Shape(t.Shape))
	if err != nil {
		return nil, err
	}
	s := make([]string, len(t.Strings))
	for i, b := range t.Strings {
		// SetContents copies each string into C memory; no Go copy needed.
		s[i] = unsafe.String(unsafe.SliceData(b), len(b))
	}
	if err := v.SetContents(s); err != nil {
		v.Destroy()
		return nil, err
	}
	return v, nil
}

// maxPreallocBytes bounds one output allocated before a run from the
// request's dimensions (FP16/BF16 and scalars; see plan).
const maxPreallocBytes = 1 << 30

// alloc makes the output's value for a run on inputs (see plan).
func (o *outputSpec) alloc(inputs []*tensor.Tensor) (ort.Value, error) {
	if len(o.dims) == 0 {
		return codecs[o.DType].value(nil, nil) // rank 0; plan refused FP16/BF16
	}
	shape := make([]int64, len(o.dims))
	for k, d := range o.dims {
		if d.input < 0 {
			shape[k] = d.size
			continue
		}
		in := inputs[d.input].Shape
		if d.axis >= len(in) {
			return nil, fmt.Errorf("dimension %d follows dimension %d of input %q, which has shape %v", k, d.axis, inputs[d.input].Name, in)
		}
		shape[k] = in[d.axis]
	}
	n := tensor.NumElements(shape)
	if n <= 0 {
		return nil, fmt.Errorf("%w: shape %v: empty %v tensors are not supported by onnxruntime_go v1.27.0", loaders.ErrInvalidInput, shape, o.DType)
	}
	// The dimensions come from the request (an empty input can carry any):
	// refuse what no sane request needs before allocating it.
	if n > maxPreallocBytes/int64(o.DType.Size()) {
		return nil, fmt.Errorf("%w: shape %v of %v, from the inputs' dimensions, would take more than %d bytes", loaders.ErrInvalidInput, shape, o.DType, int64(maxPreallocBytes))
	}
	v, err := ort.NewCustomDataTensor(shape, make([]byte, n*int64(o.DType.Size())), o.ortType)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// tensor copies the output's value out of ORT.
func (o *outputSpec) tensor(v ort.Value) (*tensor.Tensor, error) {
	t := &tensor.Tensor{Name: o.Name, DType: o.DType, Shape: v.GetShape()}
	if t.Shape == nil {
		t.Shape = []int64{}
	}
	switch x := v.(type) {
	case *ort.CustomDataTensor: // pre-allocated by alloc: the buffer is ours
		t.Data = x.GetData()
	case *ort.StringTensor:
		var s []string
		var err error
		if len(t.Shape) == 0 {
			var e string
			e, err = x.GetElement(0) // GetContents cannot read rank 0
			s = []string{e}
		} else {
			s, err = x.GetContents()
		}
		if err != nil {
			return nil, err
		}
		t.Strings = make([][]byte, len(s))
		for i, e := range s {
			t.Strings[i] = []byte(e)
		}
	default:
		var ok bool
		if c := codecs[o.DType]; c.bytes != nil {
			t.Data, ok = c.bytes(v)
		}
		if !ok {
			return nil, fmt.Errorf("ORT returned a %T for a %v output", v, o.DType)
		}
	}
	return t, nil
}

// Close destroys the ORT session, after any Infer in progress returns.
// Later Infer calls fail with loaders.ErrClosed; Close again does nothing.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.session == nil {
		return nil
	}
	err := m.session.Destroy()
	m.session = nil
	for len(m.runOpts) > 0 {
		(<-m.runOpts).Destroy()
	}
	if err != nil {
		return fmt.Errorf("onnx: close %s: %w", m.path, err)
	}
	return nil
}

var _ loaders.Model = (*Model)(nil)
