package sdk_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/guesttest"
	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// literalPool runs guests/sdk/testdata/literal, a guest coded from
// guests/ABI.md alone, in mode.
func literalPool(t *testing.T, mode string) *guest.Pool {
	t.Helper()
	ctx := context.Background()
	rt, err := guest.NewRuntime(ctx, guest.Config{CacheDir: filepath.Join(os.TempDir(), "cyxwiz-wazero-cache")}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(ctx) })
	m, err := rt.Compile(ctx, guesttest.Build(t, "guests/sdk/testdata/literal"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(ctx) })
	p, err := rt.NewPool(ctx, m, guest.PoolConfig{Name: "test/literal", Config: map[string]string{"mode": mode}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(ctx) })
	return p
}

// everyDType is one tensor of each datatype, an empty one, a scalar and
// one too big to be passed inline (ABI.md: over 4 KiB goes by handle).
func everyDType() []*tensor.Tensor {
	var in []*tensor.Tensor
	for _, dt := range tensor.DTypes() {
		x := tensor.New(strings.ToLower(dt.String()), dt, 2, 3)
		if dt == tensor.Bytes {
			x.Strings = [][]byte{[]byte("a"), nil, []byte("ccc"), []byte("é"), {0}, []byte("ffffff")}
		} else {
			for i := range x.Data {
				x.Data[i] = byte(i%7) & 1 // BOOL takes 0 and 1 only
			}
		}
		in = append(in, x)
	}
	big := tensor.New("big", tensor.FP16, 4, 1024)
	for i := range big.Data {
		big.Data[i] = byte(i)
	}
	bigs := tensor.New("bigs", tensor.Bytes, 2)
	bigs.Strings = [][]byte{bytes.Repeat([]byte("s"), 5000), []byte("t")}
	return append(in,
		tensor.New("empty", tensor.BF16, 0, 5),
		tensor.FromSlice("scalar", tensor.Int64, []int64{}, []int64{-7}),
		big, bigs)
}

func sameTensors(t *testing.T, got, want []*tensor.Tensor) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d outputs, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Name != w.Name || g.DType != w.DType || !slices.Equal(g.Shape, w.Shape) ||
			!bytes.Equal(g.Data, w.Data) || !slices.EqualFunc(g.Strings, w.Strings, bytes.Equal) {
			t.Errorf("output %d: %s %v %v, want %s %v %v", i, g.Name, g.DType, g.Shape, w.Name, w.DType, w.Shape)
		}
	}
}

// A guest written from ABI.md alone gets its inputs as the document lays
// them out and its outputs back unchanged, for every datatype, inline and
// by handle.
func TestLiteralGuest(t *testing.T) {
	for _, mode := range []string{"echo", "read"} {
		t.Run(mode, func(t *testing.T) {
			p := literalPool(t, mode)
			in := everyDType()
			for range 2 { // the second call reuses the input buffer
				out, err := p.Preprocess(context.Background(), in)
				if err != nil {
					t.Fatal(err)
				}
				sameTensors(t, out, in)
			}
		})
	}
	t.Run("init", func(t *testing.T) {
		out, err := literalPool(t, "init").Preprocess(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || out[0].DType != tensor.Int32 || tensor.View[int32](out[0])[0] != -8 {
			t.Fatalf("config_get from _initialize: %v, want ENOCALL (-8)", out)
		}
	})
	t.Run("error", func(t *testing.T) {
		_, err := literalPool(t, "error").Preprocess(context.Background(), nil)
		if !errors.Is(err, guest.ErrGuest) || !strings.Contains(err.Error(), "literal: boom") {
			t.Fatalf("err = %v, want ErrGuest with the guest's message", err)
		}
	})
}

// The SDK carries every datatype, empty tensors, scalars and inputs passed
// by handle unchanged: as they came, read into the guest, and uploaded
// back to the host.
func TestSDKEveryDType(t *testing.T) {
	for _, mode := range []string{"echo", "copy", "upload"} {
		t.Run(mode, func(t *testing.T) {
			p := keptPool(t, mode)
			in := everyDType()
			for range 2 {
				out, err := p.Preprocess(context.Background(), in)
				if err != nil {
					t.Fatal(err)
				}
				sameTensors(t, out, in)
			}
		})
	}
}

// A failed host operation reaches the author as the function, its errno
// and the host's message (last_error), not a bare number.
func TestHostErrorMessage(t *testing.T) {
	_, err := keptPool(t, "hosterr").Preprocess(context.Background(), everyDType())
	if !errors.Is(err, guest.ErrGuest) {
		t.Fatalf("err = %v, want ErrGuest", err)
	}
	for _, want := range []string{"cyxwiz.softmax", "EINVAL", `tensor "bool" is BOOL, want FP32`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to say %q", err, want)
		}
	}
}
