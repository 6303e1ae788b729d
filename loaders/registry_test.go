package loaders_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
)

// fakeLoader is a loader whose availability the test sets.
type fakeLoader struct {
	name string
	err  error
}

func (f fakeLoader) Format() string   { return f.name }
func (f fakeLoader) Available() error { return f.err }
func (f fakeLoader) Load(context.Context, string, loaders.Options) (loaders.Model, error) {
	return nil, errors.New("fake: " + f.name)
}

func TestRegistry(t *testing.T) {
	r := loaders.NewRegistry(
		fakeLoader{name: "onnx"},
		fakeLoader{name: "gguf", err: errors.New("libllama.so missing")},
		loaders.Unsupported{Name: "pytorch", Reason: "no libtorch in this build"},
	)

	if l, err := r.Get("ONNX"); err != nil || l.Format() != "onnx" {
		t.Fatalf("Get(ONNX) = %v, %v", l, err)
	}
	if _, err := r.Get("gguf"); err == nil || !strings.Contains(err.Error(), "libllama.so missing") {
		t.Fatalf("unavailable loader: %v", err)
	}
	_, err := r.Get("pytorch")
	if !errors.Is(err, loaders.ErrUnavailable) || !strings.Contains(err.Error(), "libtorch") {
		t.Fatalf("unsupported: %v", err)
	}
	_, err = r.Get("caffe")
	if !errors.Is(err, loaders.ErrUnknownFormat) || !strings.Contains(err.Error(), "onnx, gguf, pytorch") {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := r.Load(context.Background(), "pytorch", "m.pt", loaders.Options{}); !errors.Is(err, loaders.ErrUnavailable) {
		t.Fatalf("Load unsupported: %v", err)
	}
	if !r.Known("GGUF") || r.Known("caffe") {
		t.Fatal("Known is wrong")
	}

	got := r.Formats()
	want := []loaders.FormatStatus{
		{Format: "onnx", Available: true},
		{Format: "gguf", Available: false, Reason: "libllama.so missing"},
		{Format: "pytorch", Available: false, Reason: "model format unavailable: pytorch: no libtorch in this build"},
	}
	if len(got) != len(want) {
		t.Fatalf("Formats() = %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Formats()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestRegistryLaterLoaderReplaces(t *testing.T) {
	r := loaders.NewRegistry(fakeLoader{name: "onnx", err: errors.New("old")}, fakeLoader{name: "onnx"})
	if _, err := r.Get("onnx"); err != nil {
		t.Fatalf("replacement not used: %v", err)
	}
	if n := len(r.Formats()); n != 1 {
		t.Fatalf("%d formats, want 1", n)
	}
}
