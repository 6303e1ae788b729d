package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

func init() {
	register("infer", "run a model: infer MODEL --input name=file.npy|file.json ... | --image file.png ... [--output name] [--json]", runInfer)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func runInfer(ctx context.Context, c *client, args []string) error {
	fs := flag.NewFlagSet("infer", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var inputs, outputs, images multiFlag
	fs.Var(&inputs, "input", "name=file.npy or name=file.json (repeatable)")
	fs.Var(&images, "image", "image file sent as one element of a BYTES input (repeatable; for a preprocess guest)")
	imageInput := fs.String("image-input", "image", "input name for --image")
	fs.Var(&outputs, "output", "output to return (repeatable; default all)")
	asJSON := fs.Bool("json", false, "print outputs as JSON")
	full := fs.Bool("full", false, "print every element, not the first 16")
	version := fs.String("version", "", "model version")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("want: infer MODEL --input name=file ...")
	}
	model := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return usagef("%v", err)
	}
	if len(inputs) == 0 && len(images) == 0 {
		return usagef("give at least one --input name=file or --image file")
	}
	cli := inference.NewGRPCInferenceServiceClient(c.conn)
	want := map[string]tensor.DType{}
	if len(inputs) > 0 {
		md, err := cli.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: model, Version: *version})
		if err != nil {
			return err
		}
		for _, in := range md.Inputs {
			want[in.Name], _ = tensor.ParseDType(in.Datatype)
		}
	}
	req := &inference.ModelInferRequest{ModelName: model, ModelVersion: *version}
	if len(images) > 0 {
		t := &tensor.Tensor{Name: *imageInput, DType: tensor.Bytes, Shape: []int64{int64(len(images))}}
		for _, path := range images {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			t.Strings = append(t.Strings, b)
		}
		req.Inputs = append(req.Inputs, &inference.ModelInferRequest_InferInputTensor{Name: t.Name, Datatype: "BYTES", Shape: t.Shape})
		req.RawInputContents = append(req.RawInputContents, rawOf(t))
	}
	for _, spec := range inputs {
		name, path, ok := strings.Cut(spec, "=")
		if !ok {
			return usagef("--input %q: want name=file", spec)
		}
		dt, known := want[name]
		if !known {
			dt = tensor.FP32
		}
		t, err := readTensorFile(path, dt)
		if err != nil {
			return err
		}
		req.Inputs = append(req.Inputs, &inference.ModelInferRequest_InferInputTensor{Name: name, Datatype: t.DType.String(), Shape: t.Shape})
		req.RawInputContents = append(req.RawInputContents, rawOf(t))
	}
	for _, o := range outputs {
		req.Outputs = append(req.Outputs, &inference.ModelInferRequest_InferRequestedOutputTensor{Name: o})
	}
	resp, err := cli.ModelInfer(ctx, req)
	if err != nil {
		return err
	}
	return printOutputs(c.out, resp, *asJSON, *full)
}

func rawOf(t *tensor.Tensor) []byte {
	if t.DType != tensor.Bytes {
		return t.Data
	}
	return tensor.AppendStrings(nil, t.Strings)
}

// outputTensors decodes a response's outputs (raw or typed).
func outputTensors(resp *inference.ModelInferResponse) ([]*tensor.Tensor, error) {
	out := make([]*tensor.Tensor, len(resp.Outputs))
	for i, o := range resp.Outputs {
		dt, err := tensor.ParseDType(o.Datatype)
		if err != nil {
			return nil, err
		}
		t := &tensor.Tensor{Name: o.Name, DType: dt, Shape: o.Shape}
		switch {
		case i < len(resp.RawOutputContents) && dt == tensor.Bytes:
			s, err := tensor.SplitStrings(resp.RawOutputContents[i], -1)
			if err != nil {
				return nil, fmt.Errorf("output %s: %w", o.Name, err)
			}
			t.Strings = s
		case i < len(resp.RawOutputContents):
			t.Data = resp.RawOutputContents[i]
		case o.Contents != nil && dt == tensor.Bytes:
			t.Strings = o.Contents.BytesContents
		case o.Contents != nil:
			vals := contentValues(dt, o.Contents)
			conv, err := fromValues(o.Name, dt, o.Shape, vals)
			if err != nil {
				return nil, err
			}
			t.Data = conv.Data
		}
		out[i] = t
	}
	return out, nil
}

func contentValues(dt tensor.DType, c *inference.InferTensorContents) []any {
	var out []any
	add := func(n int, f func(int) float64) {
		for i := range n {
			out = append(out, f(i))
		}
	}
	add(len(c.BoolContents), func(i int) float64 {
		if c.BoolContents[i] {
			return 1
		}
		return 0
	})
	add(len(c.IntContents), func(i int) float64 { return float64(c.IntContents[i]) })
	add(len(c.Int64Contents), func(i int) float64 { return float64(c.Int64Contents[i]) })
	add(len(c.UintContents), func(i int) float64 { return float64(c.UintContents[i]) })
	add(len(c.Uint64Contents), func(i int) float64 { return float64(c.Uint64Contents[i]) })
	add(len(c.Fp32Contents), func(i int) float64 { return float64(c.Fp32Contents[i]) })
	add(len(c.Fp64Contents), func(i int) float64 { return c.Fp64Contents[i] })
	return out
}

// values renders a tensor's elements as Go values for printing.
func values(t *tensor.Tensor) []any {
	var out []any
	switch t.DType {
	case tensor.Bytes:
		for _, s := range t.Strings {
			out = append(out, string(s))
		}
	case tensor.Bool:
		for _, v := range t.Data {
			out = append(out, v != 0)
		}
	case tensor.Uint8:
		for _, v := range t.Data {
			out = append(out, v)
		}
	case tensor.Int8:
		for _, v := range tensor.View[int8](t) {
			out = append(out, v)
		}
	case tensor.Uint16, tensor.FP16, tensor.BF16:
		for _, v := range tensor.View[uint16](t) {
			out = append(out, v)
		}
	case tensor.Int16:
		for _, v := range tensor.View[int16](t) {
			out = append(out, v)
		}
	case tensor.Uint32:
		for _, v := range tensor.View[uint32](t) {
			out = append(out, v)
		}
	case tensor.Int32:
		for _, v := range tensor.View[int32](t) {
			out = append(out, v)
		}
	case tensor.Uint64:
		for _, v := range tensor.View[uint64](t) {
			out = append(out, v)
		}
	case tensor.Int64:
		for _, v := range tensor.View[int64](t) {
			out = append(out, v)
		}
	case tensor.FP32:
		for _, v := range tensor.View[float32](t) {
			out = append(out, v)
		}
	case tensor.FP64:
		for _, v := range tensor.View[float64](t) {
			out = append(out, v)
		}
	}
	return out
}

func printOutputs(w io.Writer, resp *inference.ModelInferResponse, asJSON, full bool) error {
	outs, err := outputTensors(resp)
	if err != nil {
		return err
	}
	if asJSON {
		type jt struct {
			Name     string  `json:"name"`
			Datatype string  `json:"datatype"`
			Shape    []int64 `json:"shape"`
			Data     []any   `json:"data"`
		}
		var list []jt
		for _, t := range outs {
			list = append(list, jt{t.Name, t.DType.String(), t.Shape, values(t)})
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"model_name": resp.ModelName, "id": resp.Id, "outputs": list})
	}
	for _, t := range outs {
		v := values(t)
		suffix := ""
		if !full && len(v) > 16 {
			v, suffix = v[:16], fmt.Sprintf(" ... (%d more)", len(values(t))-16)
		}
		fmt.Fprintf(w, "%s %s %v: %v%s\n", t.Name, t.DType, t.Shape, v, suffix)
	}
	return nil
}
