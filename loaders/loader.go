// Package loaders defines how the node loads a model file into a native
// runtime and runs it: one small Loader per format, a Model per loaded file,
// and a Registry that tells which formats this build can serve and why the
// others cannot.
//
// Loaders never import the daemon's own packages (host/...): they take paths
// and options and return Go values, so the engine, the WASM host functions and
// the tests all drive them the same way.
package loaders

import (
	"context"
	"errors"
	"log/slog"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Errors a caller branches on. Loaders wrap them with context.
var (
	// ErrUnknownFormat: no loader of that name exists at all.
	ErrUnknownFormat = errors.New("unknown model format")
	// ErrUnavailable: the format exists but this node cannot load it (missing native library, not built in).
	ErrUnavailable = errors.New("model format unavailable")
	// ErrInvalidModel: the file is missing, truncated or not a model of this format.
	ErrInvalidModel = errors.New("invalid model")
	// ErrInvalidInput: the tensors passed to Infer do not fit the model (name, type, shape).
	ErrInvalidInput = errors.New("invalid input")
	// ErrClosed: the model was unloaded.
	ErrClosed = errors.New("model closed")
)

// Options tune one Load. Zero values mean "the loader's default".
type Options struct {
	// IntraOpThreads and InterOpThreads size the runtime's thread pools.
	IntraOpThreads int
	InterOpThreads int
	// Providers is the ordered list of execution providers to try
	// ("cuda", "cpu"); a provider that cannot load is skipped with a warning.
	Providers []string
	// ExternalData lets a model read data from other files next to it
	// (ONNX external data). Off, such a model does not load: in the
	// artifact cache, the files next to a model are other deployments'
	// artifacts, which it could hand back as its outputs. Only for models
	// whose directory the node's operator chose.
	ExternalData bool
	// Extra holds format-specific options from the deployment spec.
	Extra map[string]string
	// Logger receives the loader's diagnostics; nil means slog.Default().
	Logger *slog.Logger
}

// Log returns the logger to use.
func (o Options) Log() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// TensorSpec describes one model input or output. -1 marks a dynamic
// dimension; a nil Shape, one the model does not declare (any rank), and an
// empty one a scalar.
type TensorSpec struct {
	Name  string
	DType tensor.DType
	Shape []int64
}

// Info describes a loaded model.
type Info struct {
	Format   string // registry name: "onnx", "gguf", ...
	Platform string // KServe platform string, e.g. "onnxruntime_onnx"
	Inputs   []TensorSpec
	Outputs  []TensorSpec
	// MemoryBytes estimates the memory the loaded model holds.
	MemoryBytes int64
	// Providers lists the execution providers actually in use.
	Providers []string
}

// Model is a loaded model. Infer is safe for concurrent use.
type Model interface {
	Info() Info
	// Infer runs the model on the named inputs and returns the requested
	// outputs (all outputs, in Info order, when names is empty).
	Infer(ctx context.Context, inputs []*tensor.Tensor, names []string) ([]*tensor.Tensor, error)
	// Close frees the model. It is safe to call more than once.
	Close() error
}

// Loader loads model files of one format.
type Loader interface {
	// Format is the registry name ("onnx").
	Format() string
	// Available returns nil when this node can load the format, or an error
	// that says why not (wrapping ErrUnavailable).
	Available() error
	// Load reads the model at path. Errors name the file.
	Load(ctx context.Context, path string, opts Options) (Model, error)
}
