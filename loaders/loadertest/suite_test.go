package loadertest_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// echo is the smallest loader that passes the suite: its model file is a
// magic string, a length and that many bytes, and its model returns input
// "in" (FP32 [-1]) as output "out".
type echo struct{}

const echoMagic = "ECHO1\n"

func (echo) Format() string   { return "echo" }
func (echo) Available() error { return nil }

func (echo) Load(ctx context.Context, path string, _ loaders.Options) (loaders.Model, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("echo: load %s: %w: %w", path, loaders.ErrInvalidModel, err)
	}
	rest, ok := bytes.CutPrefix(b, []byte(echoMagic))
	if !ok || len(rest) < 4 || int(binary.LittleEndian.Uint32(rest)) != len(rest)-4 {
		return nil, fmt.Errorf("echo: load %s: %w: bad header", path, loaders.ErrInvalidModel)
	}
	return &echoModel{}, nil
}

type echoModel struct {
	mu     sync.RWMutex
	closed bool
}

func (m *echoModel) Info() loaders.Info {
	return loaders.Info{
		Format: "echo", Platform: "echo",
		Inputs:    []loaders.TensorSpec{{Name: "in", DType: tensor.FP32, Shape: []int64{-1}}},
		Outputs:   []loaders.TensorSpec{{Name: "out", DType: tensor.FP32, Shape: []int64{-1}}},
		Providers: []string{"go"},
	}
}

func (m *echoModel) Infer(ctx context.Context, in []*tensor.Tensor, names []string) ([]*tensor.Tensor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, loaders.ErrClosed
	}
	if len(names) > 1 || len(names) == 1 && names[0] != "out" {
		return nil, fmt.Errorf("%w: outputs %q", loaders.ErrInvalidInput, names)
	}
	if len(in) != 1 || in[0].Name != "in" || in[0].DType != tensor.FP32 || len(in[0].Shape) != 1 {
		return nil, fmt.Errorf("%w: want one FP32 vector \"in\"", loaders.ErrInvalidInput)
	}
	if err := in[0].Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", loaders.ErrInvalidInput, err)
	}
	out := in[0].Clone()
	out.Name = "out"
	return []*tensor.Tensor{out}, nil
}

func (m *echoModel) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

func TestSuiteOnEcho(t *testing.T) {
	payload := bytes.Repeat([]byte("weights."), 16)
	model := binary.LittleEndian.AppendUint32([]byte(echoMagic), uint32(len(payload)))
	path := filepath.Join(t.TempDir(), "m.echo")
	if err := os.WriteFile(path, append(model, payload...), 0o644); err != nil {
		t.Fatal(err)
	}
	in := tensor.FromSlice("in", tensor.FP32, []int64{3}, []float32{1, -2, 3.5})
	want := in.Clone()
	want.Name = "out"
	loadertest.Run(t, echo{}, loadertest.Fixtures{
		Model:  path,
		Inputs: []*tensor.Tensor{in},
		Want:   []*tensor.Tensor{want},
	})
}

var _ loaders.Loader = echo{}

// The suite runs on a model whose valid request is empty (FP32 [0]):
// WrongElementCount sliced one element off the input, below 0, and
// panicked the whole test binary.
func TestSuiteOnEmptyInput(t *testing.T) {
	payload := []byte("weights.")
	model := binary.LittleEndian.AppendUint32([]byte(echoMagic), uint32(len(payload)))
	path := filepath.Join(t.TempDir(), "m.echo")
	if err := os.WriteFile(path, append(model, payload...), 0o644); err != nil {
		t.Fatal(err)
	}
	in := tensor.New("in", tensor.FP32, 0)
	want := in.Clone()
	want.Name = "out"
	loadertest.Run(t, echo{}, loadertest.Fixtures{
		Model:  path,
		Inputs: []*tensor.Tensor{in},
		Want:   []*tensor.Tensor{want},
	})
}
