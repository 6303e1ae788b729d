package onnx

// Helpers for the zz_review_* tests: a tiny hand encoder of ONNX protobuf
// messages, so that tests can craft models onnxtest does not make (nodes with
// attributes, zero inputs, lying declared shapes, NULs in names...).

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/loadertest"
	"google.golang.org/protobuf/encoding/protowire"
)

type rvDim struct {
	value int64
	param string // used when value < 0; "" = anonymous dynamic dim
}

func rvAppendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func rvAppendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// rvValueInfo encodes a ValueInfoProto; dims == nil means no shape at all.
func rvValueInfo(name string, elem int, dims []rvDim) []byte {
	var tt []byte
	tt = rvAppendVarint(tt, 1, uint64(elem))
	if dims != nil {
		var sh []byte
		for _, d := range dims {
			var dim []byte
			switch {
			case d.value >= 0 || d.value < -1:
				dim = rvAppendVarint(dim, 1, uint64(d.value))
			case d.param != "":
				dim = rvAppendBytes(dim, 2, []byte(d.param))
			}
			sh = rvAppendBytes(sh, 1, dim)
		}
		tt = rvAppendBytes(tt, 2, sh)
	}
	var b []byte
	b = rvAppendBytes(b, 1, []byte(name))
	b = rvAppendBytes(b, 2, rvAppendBytes(nil, 1, tt))
	return b
}

// rvAttrInt encodes an AttributeProto of type INT.
func rvAttrInt(name string, v int64) []byte {
	var a []byte
	a = rvAppendBytes(a, 1, []byte(name))
	a = rvAppendVarint(a, 3, uint64(v)) // i
	a = rvAppendVarint(a, 20, 2)        // type = INT
	return a
}

func rvNode(op string, inputs, outputs []string, attrs ...[]byte) []byte {
	var b []byte
	for _, in := range inputs {
		b = rvAppendBytes(b, 1, []byte(in))
	}
	for _, out := range outputs {
		b = rvAppendBytes(b, 2, []byte(out))
	}
	b = rvAppendBytes(b, 4, []byte(op))
	for _, a := range attrs {
		b = rvAppendBytes(b, 5, a)
	}
	return b
}

func rvTensor(name string, elem int, dims []int64, raw []byte) []byte {
	var b []byte
	for _, d := range dims {
		b = rvAppendVarint(b, 1, uint64(d))
	}
	b = rvAppendVarint(b, 2, uint64(elem))
	b = rvAppendBytes(b, 8, []byte(name))
	b = rvAppendBytes(b, 9, raw)
	return b
}

func rvGraph(nodes, inits, inputs, outputs [][]byte) []byte {
	var g []byte
	for _, n := range nodes {
		g = rvAppendBytes(g, 1, n)
	}
	g = rvAppendBytes(g, 2, []byte("g"))
	for _, t := range inits {
		g = rvAppendBytes(g, 5, t)
	}
	for _, v := range inputs {
		g = rvAppendBytes(g, 11, v)
	}
	for _, v := range outputs {
		g = rvAppendBytes(g, 12, v)
	}
	return g
}

func rvModelFromGraphs(graphs ...[]byte) []byte {
	var opset []byte
	opset = rvAppendBytes(opset, 1, nil)
	opset = rvAppendVarint(opset, 2, 17)
	var m []byte
	m = rvAppendVarint(m, 1, 8)
	m = rvAppendBytes(m, 2, []byte("zz-review"))
	for _, g := range graphs {
		m = rvAppendBytes(m, 7, g)
	}
	m = rvAppendBytes(m, 8, opset)
	return m
}

func rvModel(nodes, inits, inputs, outputs [][]byte) []byte {
	return rvModelFromGraphs(rvGraph(nodes, inits, inputs, outputs))
}

func rvLoader(t testing.TB) *Loader {
	t.Helper()
	l := New(Config{LibraryPath: loadertest.NativeLib(t, "onnxruntime/libonnxruntime.so.1")})
	if err := l.Available(); err != nil {
		t.Fatalf("Available: %v", err)
	}
	return l
}

func rvLoad(t testing.TB, model []byte) (loaders.Model, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(p, model, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := rvLoader(t).Load(context.Background(), p, loaders.Options{IntraOpThreads: 1, InterOpThreads: 1})
	if err == nil {
		t.Cleanup(func() { m.Close() })
	}
	return m, err
}

const (
	elemFloat   = 1
	elemInt64   = 7
	elemFloat16 = 10
)
