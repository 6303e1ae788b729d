// Package onnx loads ONNX models into ONNX Runtime (through
// github.com/yalue/onnxruntime_go, cgo) and runs them on tensor.Tensor
// values.
//
// ONNX element types map one to one onto the KServe datatypes (float → FP32,
// float16 → FP16, bfloat16 → BF16, string → BYTES, ...); a model with a
// tensor of any other type (complex, float8, int4) does not load.
//
// Usage:
//
//	l := onnx.New(onnx.Config{LibraryPath: "lib/onnxruntime/libonnxruntime.so.1"})
//	if err := l.Available(); err != nil { ... }
//	m, err := l.Load(ctx, "model.onnx", loaders.Options{Providers: []string{"cuda", "cpu"}})
//	out, err := m.Infer(ctx, []*tensor.Tensor{x}, nil)
//
// Infer computes every output (an onnxruntime_go session has a fixed output
// list) and returns those asked for. A BOOL input byte other than 0 is true
// (ORT itself would read it as an undefined C++ bool), and an output that is
// a graph input comes back as a copy of that input. Load has ONNX Runtime
// parse the model twice: once unoptimised, to list its inputs and outputs,
// once for the session; it also reads the graph's input and output
// declarations from the file itself, seeking past the weights.
//
// A model that keeps tensor data in other files (ONNX external data) loads
// only with loaders.Options.ExternalData: ONNX Runtime reads whatever file
// in the model's directory a tensor names.
//
// In Info, a dynamic dimension is -1, and a tensor whose file declares no
// shape at all has a nil Shape (a rank-0 tensor has an empty, non-nil one).
//
// Limits of onnxruntime_go v1.27.0 that this package works around, or
// reports: ORT's log goes to stderr (there is no logging callback, so
// Config.LogLevel only sets its threshold); FP16/BF16 and rank-0 outputs
// cannot be ORT-allocated, so they are sized before each run from the
// model's declared dimensions (a model whose FP16/BF16 output has a dynamic
// dimension not named after an input dimension does not load); BYTES
// elements are passed as C strings, so they must not contain a NUL byte;
// a model with a rank-0 BYTES, FP16 or BF16 input does not load, and empty
// FP16/BF16 tensors are refused.
package onnx

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	ort "github.com/yalue/onnxruntime_go"
)

// Format is the registry name of this loader.
const Format = "onnx"

// Platform is the KServe platform string of the models it loads.
const Platform = "onnxruntime_onnx"

// Config configures the loader.
type Config struct {
	// LibraryPath is the ONNX Runtime shared library (1.30 is what this
	// package is tested with). Default: "libonnxruntime.so.1", looked up by
	// the dynamic linker.
	LibraryPath string
	// LogLevel is ONNX Runtime's own log threshold: "verbose", "info",
	// "warning", "error" or "fatal". Default: "fatal". ORT writes its log
	// straight to stderr (onnxruntime_go offers no callback to route it into
	// slog), and every error it logs also comes back as a status that this
	// package wraps, so the default keeps stderr clean.
	LogLevel string
}

// Loader loads ONNX models. Create it with New.
type Loader struct {
	lib   string
	level string
}

// New returns a loader for cfg. Nothing is loaded until Available or Load.
func New(cfg Config) *Loader {
	l := &Loader{lib: cfg.LibraryPath, level: strings.ToLower(cfg.LogLevel)}
	if l.lib == "" {
		l.lib = "libonnxruntime.so.1"
	}
	if l.level == "" {
		l.level = "fatal"
	}
	return l
}

// Format returns "onnx".
func (l *Loader) Format() string { return Format }

var logLevels = map[string]ort.LoggingLevel{
	"verbose": ort.LoggingLevelVerbose,
	"info":    ort.LoggingLevelInfo,
	"warning": ort.LoggingLevelWarning,
	"warn":    ort.LoggingLevelWarning,
	"error":   ort.LoggingLevelError,
	"fatal":   ort.LoggingLevelFatal,
}

// env is ONNX Runtime's environment. onnxruntime_go keeps exactly one per
// process in package state, so it is set up once, by the first Available
// call of any Loader, and never torn down.
var env struct {
	once sync.Once
	lib  string
	err  error
}

// Available loads the ONNX Runtime library and sets up its environment on
// the first call in the process. It returns nil, or an error wrapping
// loaders.ErrUnavailable that names the library and the cause. A failure is
// final for the life of the process.
func (l *Loader) Available() error {
	level, ok := logLevels[l.level]
	if !ok {
		return fmt.Errorf("%w: onnx: log level %q (want verbose, info, warning, error or fatal)", loaders.ErrUnavailable, l.level)
	}
	env.once.Do(func() {
		env.lib = l.lib
		env.err = initEnv(l.lib, level)
	})
	if env.err != nil {
		return fmt.Errorf("%w: onnx: ONNX Runtime %s: %w", loaders.ErrUnavailable, env.lib, env.err)
	}
	if l.lib != env.lib {
		return fmt.Errorf("%w: onnx: ONNX Runtime is already loaded from %s in this process, cannot also use %s", loaders.ErrUnavailable, env.lib, l.lib)
	}
	return nil
}

func initEnv(lib string, level ort.LoggingLevel) error {
	if !ort.IsInitialized() {
		ort.SetSharedLibraryPath(lib)
		if err := ort.InitializeEnvironment(); err != nil {
			return err
		}
	}
	if err := ort.SetEnvironmentLogLevel(level); err != nil {
		return fmt.Errorf("set log level: %w", err)
	}
	return nil
}

// Load reads the ONNX model at path and creates an ONNX Runtime session for
// it. Errors name the file; a missing, unreadable or malformed file wraps
// loaders.ErrInvalidModel.
func (l *Loader) Load(ctx context.Context, path string, opts loaders.Options) (loaders.Model, error) {
	if err := l.Available(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, invalidModel(path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, invalidModel(path, errors.New("not a regular file"))
	}
	// ONNX Runtime says "system error number 13" for a file it may not read.
	f, err := os.Open(path)
	if err != nil {
		return nil, invalidModel(path, err)
	}
	f.Close()
	if err := checkProviders(opts.Providers); err != nil {
		return nil, fmt.Errorf("onnx: load %s: %w", path, err)
	}

	ins, outs, err := ioInfo(path)
	if err != nil {
		return nil, invalidModel(path, err)
	}
	// After ORT's parse, so that a malformed file gets ORT's word for it;
	// before the session that serves, so that no run reads another file.
	if !opts.ExternalData {
		if err := noExternalData(path); err != nil {
			return nil, invalidModel(path, err)
		}
	}
	if err := usableIO(ins, outs); err != nil {
		return nil, invalidModel(path, err)
	}
	m := &Model{
		path:      path,
		inByName:  make(map[string]int, len(ins)),
		outByName: make(map[string]int, len(outs)),
		runOpts:   make(chan *ort.RunOptions, 16),
	}
	if err := m.describe(path, ins, outs); err != nil {
		return nil, invalidModel(path, err)
	}

	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("onnx: load %s: session options: %w", path, err)
	}
	defer so.Destroy()
	if err := so.SetIntraOpNumThreads(opts.IntraOpThreads); err != nil {
		return nil, fmt.Errorf("onnx: load %s: intra-op threads: %w", path, err)
	}
	if err := so.SetInterOpNumThreads(opts.InterOpThreads); err != nil {
		return nil, fmt.Errorf("onnx: load %s: inter-op threads: %w", path, err)
	}
	// ONNX Runtime uses inter-op threads only in its parallel execution
	// mode (independent branches of the graph at once); without it the
	// setting did nothing.
	if opts.InterOpThreads > 1 {
		if err := so.SetExecutionMode(ort.ExecutionModeParallel); err != nil {
			return nil, fmt.Errorf("onnx: load %s: parallel execution mode: %w", path, err)
		}
	}
	providers := appendProviders(so, path, opts)

	inNames := make([]string, len(m.inputs))
	for i, in := range m.inputs {
		inNames[i] = in.Name
	}
	outNames := make([]string, len(m.outputs))
	for i, out := range m.outputs {
		outNames[i] = out.Name
	}
	m.session, err = ort.NewDynamicAdvancedSession(path, inNames, outNames, so)
	if err != nil {
		return nil, invalidModel(path, err)
	}

	m.info = loaders.Info{
		Format:   Format,
		Platform: Platform,
		Inputs:   make([]loaders.TensorSpec, len(m.inputs)),
		Outputs:  make([]loaders.TensorSpec, len(m.outputs)),
		// ORT holds the weights once, about the size of the file; its arena
		// for activations grows on top of that with use and is not counted.
		MemoryBytes: fi.Size(),
		Providers:   providers,
	}
	for i, in := range m.inputs {
		m.info.Inputs[i] = in.TensorSpec
	}
	for i, out := range m.outputs {
		m.info.Outputs[i] = out.TensorSpec
		m.all = append(m.all, i)
	}
	opts.Log().Debug("onnx: model loaded", "path", path, "inputs", len(m.inputs), "outputs", len(m.outputs), "providers", providers)
	return m, nil
}

// noExternalData refuses a model with a tensor whose data lives in
// another file: ONNX Runtime reads any file in the model's directory that a
// tensor names (see loaders.Options.ExternalData).
func noExternalData(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	found, err := externalData(f)
	if err != nil {
		return fmt.Errorf("looking for external data: %w", err)
	}
	if found != "" {
		return fmt.Errorf("%s: tensor data in other files (ONNX external data) is not allowed for this model", found)
	}
	return nil
}

// usableIO refuses a model without inputs or outputs: onnxruntime_go
// cannot run one (it indexes the first of each).
func usableIO(ins, outs []ort.InputOutputInfo) error {
	if len(ins) == 0 || len(outs) == 0 {
		return fmt.Errorf("%d inputs and %d outputs: a model needs at least one of each", len(ins), len(outs))
	}
	return nil
}

func invalidModel(path string, err error) error {
	return fmt.Errorf("onnx: load %s: %w: %w", path, loaders.ErrInvalidModel, ortLoadError{err, path})
}

// ortLoadError is ONNX Runtime's load error without the words that repeat
// what the caller's message already says: "Error loading temporary
// session: Load model from PATH failed:Protobuf parsing failed." reads
// "Protobuf parsing failed.".
type ortLoadError struct {
	err  error
	path string
}

func (e ortLoadError) Error() string {
	msg := strings.TrimPrefix(e.err.Error(), "Error loading temporary session: ")
	if rest, ok := strings.CutPrefix(msg, "Load model from "+e.path+" failed:"); ok {
		msg = strings.TrimSpace(rest)
	}
	return msg
}

func (e ortLoadError) Unwrap() error { return e.err }

// ioInfo asks ONNX Runtime for the model's inputs and outputs. It needs a
// session of its own; with graph optimisation off and one thread it costs
// about a parse of the file.
func ioInfo(path string) (ins, outs []ort.InputOutputInfo, err error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, nil, err
	}
	defer so.Destroy()
	if err := so.SetGraphOptimizationLevel(ort.GraphOptimizationLevelDisableAll); err != nil {
		return nil, nil, err
	}
	if err := so.SetIntraOpNumThreads(1); err != nil {
		return nil, nil, err
	}
	return ort.GetInputOutputInfoWithOptions(path, so)
}

// describe fills in the model's input and output specs from ORT's view of
// them, reading the file itself only where ORT's view is not enough.
func (m *Model) describe(path string, ins, outs []ort.InputOutputInfo) error {
	var graph map[string]graphValue // read on demand
	var graphErr error
	readGraph := func() {
		if graph != nil || graphErr != nil {
			return
		}
		f, err := os.Open(path)
		if err != nil {
			graphErr = err
			return
		}
		defer f.Close()
		graph, graphErr = readGraphValues(f)
	}
	// ORT's C API cuts names at a NUL byte: a model whose input or output
	// name holds one would load, and then fail every run ("Invalid input
	// name").
	readGraph()
	for name := range graph {
		if strings.IndexByte(name, 0) >= 0 {
			return fmt.Errorf("graph input or output %q: names with a NUL byte are cut short by ONNX Runtime's C API", name)
		}
	}
	// shape turns ORT's dimensions into a TensorSpec shape: ORT reports both
	// "no declared shape" and "rank 0" as zero dimensions; the file tells.
	shape := func(info ort.InputOutputInfo) []int64 {
		if len(info.Dimensions) > 0 {
			return slices.Clone([]int64(info.Dimensions))
		}
		readGraph()
		if v, ok := graph[info.Name]; ok && v.hasShape {
			return []int64{}
		}
		return nil // unknown rank
	}
	spec := func(kind string, info ort.InputOutputInfo) (loaders.TensorSpec, error) {
		if info.OrtValueType != ort.ONNXTypeTensor {
			return loaders.TensorSpec{}, fmt.Errorf("%s %q is a %v; only tensors are supported", kind, info.Name, info.OrtValueType)
		}
		dt, ok := dtypeOf(info.DataType)
		if !ok {
			return loaders.TensorSpec{}, fmt.Errorf("%s %q has ONNX type %v, which has no KServe datatype", kind, info.Name, info.DataType)
		}
		return loaders.TensorSpec{Name: info.Name, DType: dt, Shape: shape(info)}, nil
	}

	for i, info := range ins {
		s, err := spec("input", info)
		if err != nil {
			return err
		}
		if s.Shape != nil && len(s.Shape) == 0 && (s.DType == tensor.Bytes || s.DType == tensor.FP16 || s.DType == tensor.BF16) {
			// Every request would be refused: say so at load.
			return fmt.Errorf("input %q: rank-0 %v inputs are not supported by onnxruntime_go v1.27.0", s.Name, s.DType)
		}
		m.inputs = append(m.inputs, inputSpec{TensorSpec: s, ortType: info.DataType})
		m.inByName[s.Name] = i
	}
	for i, info := range outs {
		s, err := spec("output", info)
		if err != nil {
			return err
		}
		out := outputSpec{TensorSpec: s, ortType: info.DataType, alias: -1}
		if j, ok := m.inByName[s.Name]; ok {
			out.alias = j
		}
		if err := out.plan(m.inputs, func() (map[string]graphValue, error) { readGraph(); return graph, graphErr }); err != nil {
			return err
		}
		m.outputs = append(m.outputs, out)
		m.outByName[s.Name] = i
	}
	if graph != nil {
		m.sameDims = namedDimGroups(m.inputs, m.outputs, graph)
	}
	return nil
}

// namedDimGroups lists, for each dim_param that sizes a pre-allocated
// output, the input dimensions named after it when there are several: ORT
// lets them differ (a broadcast), but the output is sized from the first,
// so a request whose named dimensions disagree would fail the run on ORT's
// shape check of that output.
func namedDimGroups(inputs []inputSpec, outputs []outputSpec, g map[string]graphValue) [][]inputAxis {
	var groups [][]inputAxis
	var seen []string
	for _, o := range outputs {
		for _, d := range o.dims {
			if d.input < 0 || d.input == o.alias {
				continue
			}
			param := g[inputs[d.input].Name].params[d.axis]
			if slices.Contains(seen, param) {
				continue
			}
			seen = append(seen, param)
			var group []inputAxis
			for j, in := range inputs {
				for axis, p := range g[in.Name].params {
					if p == param && axis < len(in.Shape) {
						group = append(group, inputAxis{j, axis})
					}
				}
			}
			if len(group) > 1 {
				groups = append(groups, group)
			}
		}
	}
	return groups
}

// plan decides whether the output must be allocated before each run and, if
// so, where each of its dimensions comes from. onnxruntime_go v1.27.0 cannot
// hand back ORT-allocated FP16/BF16 tensors (it copies one byte per element)
// or rank-0 tensors (it refuses their shape, and then leaks the run's other
// ORT-allocated outputs): a numeric output must declare its rank.
func (o *outputSpec) plan(inputs []inputSpec, graph func() (map[string]graphValue, error)) error {
	half := o.DType == tensor.FP16 || o.DType == tensor.BF16
	switch {
	case o.Shape == nil && half:
		return fmt.Errorf("output %q: %v with no declared shape: onnxruntime_go v1.27.0 cannot return ORT-allocated %v tensors, and the shape is needed to allocate it", o.Name, o.DType, o.DType)
	case o.Shape == nil && o.DType != tensor.Bytes:
		return fmt.Errorf("output %q: %v with no declared shape: onnxruntime_go v1.27.0 fails on an ORT-allocated output that turns out a scalar (and leaks that run's outputs); declare the output's shape in the model", o.Name, o.DType)
	case !half && len(o.Shape) > 0, o.DType == tensor.Bytes:
		return nil // ORT allocates it
	case len(o.Shape) == 0:
		if half {
			return fmt.Errorf("output %q: rank-0 %v tensors are not supported by onnxruntime_go v1.27.0", o.Name, o.DType)
		}
		o.prealloc = true
		return nil
	}
	o.prealloc = true
	o.dims = make([]dimSource, len(o.Shape))
	for k, d := range o.Shape {
		o.dims[k] = dimSource{size: d, input: -1}
		if d >= 0 {
			continue
		}
		if o.alias >= 0 && k < len(inputs[o.alias].Shape) {
			// A pass-through: the dimensions are the input's (Infer
			// copies the input, but ORT still wants the buffer).
			o.dims[k].input, o.dims[k].axis = o.alias, k
			continue
		}
		g, err := graph()
		if err != nil {
			return fmt.Errorf("output %q: reading its dimension names: %w", o.Name, err)
		}
		if !resolveDim(&o.dims[k], g[o.Name], k, inputs, g) {
			return fmt.Errorf("output %q: %v with dynamic dimension %d not named after an input dimension: onnxruntime_go v1.27.0 cannot return ORT-allocated %v tensors, so the size must be known before the run", o.Name, o.DType, k, o.DType)
		}
	}
	return nil
}

// resolveDim points dynamic dimension k of output out at the first input
// dimension with the same dim_param.
func resolveDim(d *dimSource, out graphValue, k int, inputs []inputSpec, g map[string]graphValue) bool {
	if k >= len(out.params) || out.params[k] == "" {
		return false
	}
	for j, in := range inputs {
		if axis := slices.Index(g[in.Name].params, out.params[k]); axis >= 0 && axis < len(in.Shape) {
			d.input, d.axis = j, axis
			return true
		}
	}
	return false
}

// checkProviders rejects names no branch of appendProviders knows.
func checkProviders(names []string) error {
	for _, p := range names {
		switch strings.ToLower(p) {
		case "cpu", "cuda", "tensorrt":
		default:
			return fmt.Errorf("unknown execution provider %q (want cuda, tensorrt or cpu)", p)
		}
	}
	return nil
}

// appendProviders adds the requested execution providers to so, in order,
// and returns those in use. A provider that cannot be set up is skipped with
// one warning, however often it is listed; ORT's CPU provider is always
// there, last. CPU runs every node, so the providers listed after "cpu"
// would never get one: they are not set up (ORT would have put them ahead
// of CPU, against the list's order). Options for a provider come from
// opts.Extra keys "cuda.<name>" and "tensorrt.<name>" (e.g.
// "cuda.device_id").
func appendProviders(so *ort.SessionOptions, path string, opts loaders.Options) []string {
	var used, tried []string
	for i, p := range opts.Providers {
		p = strings.ToLower(p)
		if p == "cpu" {
			if rest := opts.Providers[i+1:]; len(rest) > 0 {
				opts.Log().Debug("onnx: execution providers listed after cpu are not used", "providers", rest, "path", path)
			}
			break
		}
		if slices.Contains(tried, p) {
			continue
		}
		tried = append(tried, p)
		var err error
		switch p {
		case "cuda":
			err = appendCUDA(so, extra(opts.Extra, "cuda."))
		case "tensorrt":
			err = appendTensorRT(so, extra(opts.Extra, "tensorrt."))
		}
		if err != nil {
			opts.Log().Warn("onnx: execution provider unavailable, skipping it", "provider", p, "path", path, "err", err)
			continue
		}
		used = append(used, p)
	}
	return append(used, "cpu")
}

func appendCUDA(so *ort.SessionOptions, options map[string]string) error {
	o, err := ort.NewCUDAProviderOptions()
	if err != nil {
		return err
	}
	defer o.Destroy()
	if len(options) > 0 {
		if err := o.Update(options); err != nil {
			return fmt.Errorf("options: %w", err)
		}
	}
	return so.AppendExecutionProviderCUDA(o)
}

func appendTensorRT(so *ort.SessionOptions, options map[string]string) error {
	o, err := ort.NewTensorRTProviderOptions()
	if err != nil {
		return err
	}
	defer o.Destroy()
	if len(options) > 0 {
		if err := o.Update(options); err != nil {
			return fmt.Errorf("options: %w", err)
		}
	}
	return so.AppendExecutionProviderTensorRT(o)
}

// extra returns the entries of m whose key starts with prefix, without it.
func extra(m map[string]string, prefix string) map[string]string {
	var out map[string]string
	for k, v := range m {
		if name, ok := strings.CutPrefix(k, prefix); ok {
			if out == nil {
				out = make(map[string]string)
			}
			out[name] = v
		}
	}
	return out
}

var _ loaders.Loader = (*Loader)(nil)
