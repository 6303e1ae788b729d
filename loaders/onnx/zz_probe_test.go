package onnx

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
	ort "github.com/yalue/onnxruntime_go"
)

func TestProbe(t *testing.T) {
	ort.SetSharedLibraryPath("/work/main/lib/onnxruntime/libonnxruntime.so.1")
	if err := ort.InitializeEnvironment(ort.WithLogLevelFatal()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, dt := range []onnxtest.ElemType{14, 15, 17, 18, 19, 20, 21, 22, 23} {
		p := filepath.Join(dir, "id.onnx")
		os.WriteFile(p, onnxtest.Identity(dt, []int64{-1, 4}), 0o644)
		ins, _, err := ort.GetInputOutputInfo(p)
		if err != nil {
			fmt.Println(dt, "info err:", err)
			continue
		}
		fmt.Println(dt, "info:", ins[0].DataType, ins[0].Dimensions)
	}
	p := filepath.Join(dir, "scalar.onnx")
	os.WriteFile(p, onnxtest.Identity(onnxtest.Float, []int64{}), 0o644)
	ins, outs, err := ort.GetInputOutputInfo(p)
	fmt.Printf("scalar info %v %+v %+v\n", err, ins, outs)
	s, _ := ort.NewDynamicAdvancedSession(p, []string{"x"}, []string{"y"}, nil)
	in, _ := ort.NewScalar[float32](2.5)
	out := []ort.Value{nil}
	err = s.Run([]ort.Value{in}, out)
	fmt.Printf("scalar autoalloc: %v %#v\n", err, out[0])
	o, _ := ort.NewScalar[float32](0)
	err = s.Run([]ort.Value{in}, []ort.Value{o})
	fmt.Printf("scalar prealloc: %v %v\n", err, o.GetData())
	os.WriteFile(p, onnxtest.Identity(onnxtest.Float16, []int64{-1, 4}), 0o644)
	s, _ = ort.NewDynamicAdvancedSession(p, []string{"x"}, []string{"y"}, nil)
	in2, _ := ort.NewCustomDataTensor(ort.NewShape(2, 4), make([]byte, 16), ort.TensorElementDataTypeFloat16)
	o2, _ := ort.NewCustomDataTensor(ort.NewShape(3, 4), make([]byte, 24), ort.TensorElementDataTypeFloat16)
	err = s.Run([]ort.Value{in2}, []ort.Value{o2})
	fmt.Printf("fp16 wrong prealloc: %v\n", err)
	st := time.Now()
	_, _, err = ort.GetInputOutputInfo("/work/main/lib/models/ppocr-cls.onnx")
	fmt.Println("ppocr info", time.Since(st), err)
	st = time.Now()
	s, err = ort.NewDynamicAdvancedSession("/work/main/lib/models/ppocr-cls.onnx", []string{"x"}, []string{"softmax_0.tmp_0"}, nil)
	fmt.Println("ppocr session", time.Since(st), err)
	fi, _ := os.Stat("/work/main/lib/models/ppocr-cls.onnx")
	fmt.Println(fi.Size())
}
