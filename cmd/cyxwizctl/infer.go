package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
	"github.com/cyxwiz/cyxwiz-node/proto/inference"
)

func init() {
	register("infer", command{
		synopsis: "MODEL --input name=file.npy|file.json ... | --image file.png ... [--output name] [--json]",
		summary:  "run a model and print its outputs",
		about: `Inputs are .npy files (C order, little-endian) or JSON: a nested array
(its datatype is the model's; for an input the model does not list,
BYTES if it holds strings, else FP32), or {"datatype": "FP32", "shape": [..], "data": [..]}.
In JSON, float values may be NaN, Infinity and -Infinity, bare or as strings;
FP16 and BF16 values are numbers, rounded to the nearest. A BYTES value is
a string, or {"b64": "<base64 of its bytes>"}.

FP16 and BF16 outputs are printed as numbers. With --json, each output is
{"name", "datatype", "shape", "data"}; in data, NaN and infinities are the
strings "NaN", "Infinity" and "-Infinity", and a BYTES element that is not
UTF-8 is {"b64": "<base64 of its bytes>"} (a UTF-8 one is a plain string).`,
		minArgs: 1, maxArgs: 1,
		run: runInfer,
	})
}

func runInfer(ctx context.Context, c *client, args []string) error {
	fs := newFlagSet("infer")
	var inputs, outputs, images multiFlag
	fs.Var(&inputs, "input", "`name=file` with a .npy or .json file (repeatable)")
	fs.Var(&images, "image", "image `file` sent as one element of a BYTES input (repeatable; for a preprocess guest)")
	imageInput := fs.String("image-input", "image", "input `name` for --image")
	fs.Var(&outputs, "output", "output `name` to return (repeatable; default all)")
	asJSON := fs.Bool("json", false, "print outputs as JSON")
	full := fs.Bool("full", false, "print every element, not the first 16")
	version := fs.String("version", "", "model `version`")
	pos, err := parseArgs(c, fs, args)
	if err != nil {
		return err
	}
	model := pos[0]
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
			// A datatype this client does not know is left out: its JSON is read as FP32
			// (and the node says what it wants), not built as an INVALID tensor.
			if dt, err := tensor.ParseDType(in.Datatype); err == nil {
				want[in.Name] = dt
			}
		}
	}
	req := &inference.ModelInferRequest{ModelName: model, ModelVersion: *version}
	if len(images) > 0 {
		t := &tensor.Tensor{Name: *imageInput, DType: tensor.Bytes, Shape: []int64{int64(len(images))}}
		for _, path := range images {
			b, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("--image: %w", err)
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
		// An input the metadata does not list (a pipeline's guest input,
		// when the node describes only its model) is Invalid here: its JSON
		// values choose BYTES or FP32.
		t, err := readTensorFile(path, want[name])
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
