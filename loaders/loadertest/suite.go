package loadertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Fixtures is what Run needs from a loader's tests: one valid model and one
// valid request for it.
type Fixtures struct {
	// Model is the path of a valid model file in the loader's format.
	Model string
	// Options are passed to every Load.
	Options loaders.Options
	// Inputs is a valid input set for Model. Run never modifies it.
	Inputs []*tensor.Tensor
	// Outputs names the outputs to request; nil requests all.
	Outputs []string
	// Want is the expected result of Infer(Inputs, Outputs), compared
	// exactly (name, datatype, shape, bytes). Ignored when Check is set.
	Want []*tensor.Tensor
	// Check, when set, judges a result instead of Want, for outputs that
	// are only known approximately.
	Check func(t testing.TB, got []*tensor.Tensor)
}

// Run is the conformance suite every loaders.Loader passes: bad files fail
// with ErrInvalidModel and name the file, bad inputs fail with
// ErrInvalidInput, a cancelled context stops Infer, Infer is safe for
// concurrent use and gives identical results, and Close is idempotent and
// final.
func Run(t *testing.T, l loaders.Loader, f Fixtures) {
	t.Helper()
	if err := l.Available(); err != nil {
		t.Fatalf("%s: Available: %v", l.Format(), err)
	}
	if len(f.Inputs) == 0 {
		t.Fatal("loadertest: Fixtures.Inputs is empty")
	}
	if f.Want == nil && f.Check == nil {
		t.Fatal("loadertest: Fixtures needs Want or Check")
	}
	ctx := context.Background()

	t.Run("MissingFile", func(t *testing.T) {
		badModel(t, l, f, filepath.Join(t.TempDir(), "missing"+filepath.Ext(f.Model)))
	})
	t.Run("GarbageFile", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "garbage"+filepath.Ext(f.Model))
		garbage := bytes.Repeat([]byte("\xffthis is not a model\x00\x01\x02\x03"), 64)
		if err := os.WriteFile(p, garbage, 0o644); err != nil {
			t.Fatal(err)
		}
		badModel(t, l, f, p)
	})
	t.Run("TruncatedFile", func(t *testing.T) {
		b, err := os.ReadFile(f.Model)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "truncated"+filepath.Ext(f.Model))
		if err := os.WriteFile(p, b[:len(b)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		badModel(t, l, f, p)
	})

	m := load(t, l, f)

	t.Run("Info", func(t *testing.T) {
		info := m.Info()
		if info.Format != l.Format() {
			t.Errorf("Info().Format = %q, want %q", info.Format, l.Format())
		}
		if info.Platform == "" {
			t.Error("Info().Platform is empty")
		}
		if len(info.Inputs) == 0 || len(info.Outputs) == 0 {
			t.Errorf("Info() has %d inputs and %d outputs, want some of each", len(info.Inputs), len(info.Outputs))
		}
		for _, s := range slices.Concat(info.Inputs, info.Outputs) {
			if s.Name == "" || !s.DType.Valid() {
				t.Errorf("Info() has tensor spec %+v, want a name and a valid datatype", s)
			}
		}
		if len(info.Providers) == 0 {
			t.Error("Info().Providers is empty")
		}
	})

	t.Run("Infer", func(t *testing.T) {
		in := cloneAll(f.Inputs)
		got, err := m.Infer(ctx, in, f.Outputs)
		if err != nil {
			t.Fatalf("Infer: %v", err)
		}
		check(t, f, got)
		for i := range in {
			if !equal(in[i], f.Inputs[i]) {
				t.Errorf("Infer modified input %q", in[i].Name)
			}
		}
	})

	badInputs := []struct {
		name   string
		mutate func(in []*tensor.Tensor) []*tensor.Tensor
		is     error // nil: any error
	}{
		{"WrongDType", func(in []*tensor.Tensor) []*tensor.Tensor {
			in[0] = otherDType(in[0])
			return in
		}, loaders.ErrInvalidInput},
		{"UnknownInput", func(in []*tensor.Tensor) []*tensor.Tensor {
			x := in[0].Clone()
			x.Name = "loadertest-no-such-input"
			return append(in, x)
		}, loaders.ErrInvalidInput},
		{"RenamedInput", func(in []*tensor.Tensor) []*tensor.Tensor {
			in[0].Name = "loadertest-no-such-input"
			return in
		}, loaders.ErrInvalidInput},
		{"MissingInput", func(in []*tensor.Tensor) []*tensor.Tensor {
			return in[1:]
		}, loaders.ErrInvalidInput},
		{"WrongElementCount", func(in []*tensor.Tensor) []*tensor.Tensor {
			// One element fewer, or one more when there is none to take
			// (an empty input: slicing below 0 panicked the suite).
			x := in[0]
			switch {
			case x.DType == tensor.Bytes && len(x.Strings) == 0:
				x.Strings = [][]byte{[]byte("loadertest")}
			case x.DType == tensor.Bytes:
				x.Strings = x.Strings[:len(x.Strings)-1]
			case len(x.Data) == 0:
				x.Data = make([]byte, x.DType.Size())
			default:
				x.Data = x.Data[:len(x.Data)-x.DType.Size()]
			}
			return in
		}, nil},
	}
	for _, c := range badInputs {
		t.Run(c.name, func(t *testing.T) {
			in := c.mutate(cloneAll(f.Inputs))
			_, err := m.Infer(ctx, in, f.Outputs)
			if err == nil {
				t.Fatal("Infer succeeded, want an error")
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("Infer error %q does not wrap %q", err, c.is)
			}
			t.Logf("error: %v", err)
		})
	}

	t.Run("UnknownOutput", func(t *testing.T) {
		_, err := m.Infer(ctx, cloneAll(f.Inputs), []string{"loadertest-no-such-output"})
		if !errors.Is(err, loaders.ErrInvalidInput) {
			t.Fatalf("Infer error %v, want one wrapping %q", err, loaders.ErrInvalidInput)
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := m.Infer(cctx, cloneAll(f.Inputs), f.Outputs)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Infer error %v, want context.Canceled", err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		const goroutines, calls = 16, 20
		first, err := m.Infer(ctx, cloneAll(f.Inputs), f.Outputs)
		if err != nil {
			t.Fatalf("Infer: %v", err)
		}
		check(t, f, first)
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for range goroutines {
			wg.Go(func() {
				in := cloneAll(f.Inputs)
				for range calls {
					got, err := m.Infer(ctx, in, f.Outputs)
					if err != nil {
						errs <- err
						return
					}
					if !slices.EqualFunc(got, first, equal) {
						errs <- errors.New("concurrent Infer gave a different result")
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("Close", func(t *testing.T) {
		m := load(t, l, f)
		if err := m.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		_, err := m.Infer(ctx, cloneAll(f.Inputs), f.Outputs)
		if !errors.Is(err, loaders.ErrClosed) {
			t.Fatalf("Infer after Close: %v, want an error wrapping %q", err, loaders.ErrClosed)
		}
	})
}

func load(t *testing.T, l loaders.Loader, f Fixtures) loaders.Model {
	t.Helper()
	m, err := l.Load(context.Background(), f.Model, f.Options)
	if err != nil {
		t.Fatalf("Load %s: %v", f.Model, err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

func badModel(t *testing.T, l loaders.Loader, f Fixtures, path string) {
	t.Helper()
	m, err := l.Load(context.Background(), path, f.Options)
	if err == nil {
		m.Close()
		t.Fatalf("Load %s succeeded, want an error", path)
	}
	if !errors.Is(err, loaders.ErrInvalidModel) {
		t.Errorf("Load error %q does not wrap %q", err, loaders.ErrInvalidModel)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("Load error %q does not name %s", err, path)
	}
	t.Logf("error: %v", err)
}

func check(t testing.TB, f Fixtures, got []*tensor.Tensor) {
	t.Helper()
	if f.Check != nil {
		f.Check(t, got)
		return
	}
	if len(got) != len(f.Want) {
		t.Fatalf("Infer returned %d tensors, want %d", len(got), len(f.Want))
	}
	for i := range got {
		if !equal(got[i], f.Want[i]) {
			t.Errorf("output %d = %s, want %s", i, describe(got[i]), describe(f.Want[i]))
		}
	}
}

// otherDType returns a copy of x retyped to a different datatype whose data
// still has the right length, so that only the datatype is wrong.
func otherDType(x *tensor.Tensor) *tensor.Tensor {
	y := x.Clone()
	if x.DType == tensor.Bytes {
		y.DType, y.Strings, y.Data = tensor.Uint8, nil, make([]byte, len(x.Strings))
		return y
	}
	for _, d := range tensor.DTypes() {
		if d != x.DType && d.Size() == x.DType.Size() {
			y.DType = d
			return y
		}
	}
	panic("loadertest: no other datatype of size " + x.DType.String())
}

func cloneAll(ts []*tensor.Tensor) []*tensor.Tensor {
	out := make([]*tensor.Tensor, len(ts))
	for i, x := range ts {
		out[i] = x.Clone()
	}
	return out
}

// Equal reports whether a and b have the same name, datatype, shape and
// elements, byte for byte.
func Equal(a, b *tensor.Tensor) bool { return equal(a, b) }

func equal(a, b *tensor.Tensor) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && a.DType == b.DType && slices.Equal(a.Shape, b.Shape) &&
		bytes.Equal(a.Data, b.Data) && slices.EqualFunc(a.Strings, b.Strings, bytes.Equal)
}

func describe(x *tensor.Tensor) string {
	if x == nil {
		return "<nil>"
	}
	if x.DType == tensor.Bytes {
		return fmt.Sprintf("%q %v %v %q", x.Name, x.DType, x.Shape, x.Strings)
	}
	return fmt.Sprintf("%q %v %v [% x]", x.Name, x.DType, x.Shape, x.Data)
}
