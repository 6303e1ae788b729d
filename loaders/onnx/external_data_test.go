package onnx

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"google.golang.org/protobuf/encoding/protowire"
)

// rvExternalTensor encodes a UINT8 TensorProto of 8 elements whose data is
// the first 8 bytes of the file location, next to the model.
func rvExternalTensor(name, location string) []byte {
	var b []byte
	b = rvAppendVarint(b, 1, 8)
	b = rvAppendVarint(b, 2, 2) // UINT8
	b = rvAppendBytes(b, 8, []byte(name))
	for _, e := range [][2]string{{"location", location}, {"offset", "0"}, {"length", "8"}} {
		var kv []byte
		kv = rvAppendBytes(kv, 1, []byte(e[0]))
		kv = rvAppendBytes(kv, 2, []byte(e[1]))
		b = rvAppendBytes(b, 13, kv)
	}
	return rvAppendVarint(b, 14, 1) // data_location = EXTERNAL
}

// rvAttrTensor and rvAttrGraph encode AttributeProtos of type TENSOR and
// GRAPH.
func rvAttrTensor(name string, t []byte) []byte {
	a := rvAppendBytes(nil, 1, []byte(name))
	a = rvAppendBytes(a, 5, t)
	return rvAppendVarint(a, 20, 4)
}

func rvAttrGraph(name string, g []byte) []byte {
	a := rvAppendBytes(nil, 1, []byte(name))
	a = rvAppendBytes(a, 6, g)
	return rvAppendVarint(a, 20, 5)
}

// TestExternalDataRefused: a model that keeps a tensor's data in another
// file reads any file next to it, and in the artifact cache those are the
// other deployments' artifacts: it could return another tenant's weights
// as its output. Such a model does not load unless Options.ExternalData
// says its directory is the operator's.
func TestExternalDataRefused(t *testing.T) {
	const uint8T = 2
	a := rvValueInfo("a", elemFloat, []rvDim{{1, ""}})
	y := rvValueInfo("y", uint8T, []rvDim{{8, ""}})
	inline := rvTensor("w", uint8T, []int64{8}, make([]byte, 8))
	branch := func(t []byte, out string) []byte {
		return rvGraph([][]byte{rvNode("Constant", nil, []string{out}, rvAttrTensor("value", t))}, nil, nil,
			[][]byte{rvValueInfo(out, uint8T, []rvDim{{8, ""}})})
	}
	cond := rvTensor("cond", 9, nil, []byte{1}) // BOOL scalar true
	models := map[string][]byte{
		"initializer": rvModel([][]byte{rvNode("Identity", []string{"w"}, []string{"y"})},
			[][]byte{rvExternalTensor("w", "victim")}, [][]byte{a}, [][]byte{y}),
		"Constant": rvModel([][]byte{
			rvNode("Constant", nil, []string{"w"}, rvAttrTensor("value", rvExternalTensor("w", "victim"))),
			rvNode("Identity", []string{"w"}, []string{"y"}),
		}, nil, [][]byte{a}, [][]byte{y}),
		"If branch": rvModel([][]byte{rvNode("If", []string{"cond"}, []string{"y"},
			rvAttrGraph("then_branch", branch(rvExternalTensor("t", "victim"), "t")),
			rvAttrGraph("else_branch", branch(inline, "e")))},
			[][]byte{cond}, [][]byte{a}, [][]byte{y}),
	}
	secret := []byte("WEIGHTS!")
	for name, model := range models {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "victim"), secret, 0o644); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "m.onnx")
			if err := os.WriteFile(p, model, 0o644); err != nil {
				t.Fatal(err)
			}
			l := rvLoader(t)
			m, err := l.Load(context.Background(), p, loaders.Options{IntraOpThreads: 1})
			if err == nil {
				outs, ierr := m.Infer(context.Background(), []*tensor.Tensor{tensor.New("a", tensor.FP32, 1)}, nil)
				m.Close()
				if ierr == nil {
					t.Fatalf("loaded, and returned %q from the file next to it", outs[0].Data)
				}
				t.Fatalf("loaded (Infer: %v)", ierr)
			}
			if !errors.Is(err, loaders.ErrInvalidModel) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), `"victim"`) {
				t.Fatalf("Load: %v; want ErrInvalidModel naming the file and the external data", err)
			}

			m, err = l.Load(context.Background(), p, loaders.Options{IntraOpThreads: 1, ExternalData: true})
			if err != nil {
				t.Fatalf("Load with ExternalData: %v", err)
			}
			defer m.Close()
			outs, err := m.Infer(context.Background(), []*tensor.Tensor{tensor.New("a", tensor.FP32, 1)}, nil)
			if err != nil || string(outs[0].Data) != string(secret) {
				t.Fatalf("with ExternalData: %v, %v", outs, err)
			}
		})
	}
}

// TestExternalDataScanKeepsOrdinaryModels: the scan finds nothing in models
// with inline weights (the demo model among them), and refuses what it
// cannot read rather than letting an unread tensor through.
func TestExternalDataScanKeepsOrdinaryModels(t *testing.T) {
	for name, b := range map[string][]byte{
		"linear": onnxtest.Linear([][]float32{{1, 2}, {3, 4}}, []float32{1, 2}),
		"int64":  onnxtest.Int64Model(),
	} {
		if found, err := externalData(bytes.NewReader(b)); found != "" || err != nil {
			t.Errorf("%s: %q, %v", name, found, err)
		}
	}
	ppocr := loadertest.NativeLib(t, "models/ppocr-cls.onnx")
	f, err := os.Open(ppocr)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if found, err := externalData(f); found != "" || err != nil {
		t.Errorf("ppocr-cls: %q, %v", found, err)
	}
	// A group (wire type 3) where an initializer starts: protobuf skips it,
	// the scan cannot, so the model is refused.
	g := protowire.AppendTag(nil, graphInitializer, protowire.StartGroupType)
	g = append(g, protowire.AppendTag(nil, graphInitializer, protowire.EndGroupType)...)
	m := rvAppendBytes(nil, modelGraph, g)
	if _, err := externalData(bytes.NewReader(m)); err == nil {
		t.Error("a group was skipped")
	}
}

func FuzzExternalData(f *testing.F) {
	f.Add(onnxtest.Linear([][]float32{{1}}, []float32{0}))
	f.Add(rvModel(nil, [][]byte{rvExternalTensor("w", "x")}, nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		externalData(bytes.NewReader(b)) // must not panic or hang
	})
}
