// Command cls-post is a classifier's postprocessing guest: it takes the
// model's scores [N, C] (the first input; [C] is one row, another rank an
// error), optionally applies a softmax, and returns the top-k labels
// (BYTES "label" [N, k]) and their scores (FP32 "score" [N, k]).
//
// Config: "labels" (comma-separated class names; a class without one is
// named by its index), "top_k" (default 1; above the number of classes C,
// k is C), "softmax" ("true" to apply a softmax first; default false, for
// models that end in one).
package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() { sdk.Register(sdk.Handlers{Postprocess: postprocess, Signature: signature}) }

// signature declares what clients get back: k labels and scores per row.
func signature() (sdk.Signature, error) {
	return sdk.Signature{Outputs: []sdk.TensorMeta{
		{Name: "label", DType: sdk.Bytes, Shape: []int64{-1, -1}},
		{Name: "score", DType: sdk.FP32, Shape: []int64{-1, -1}},
	}}, nil
}

func main() {}

// The config of an instance never changes: read it once.
var (
	loaded   bool
	labels   []string
	topK     = 1
	doSoftma bool
)

func config() {
	if loaded {
		return
	}
	loaded = true
	if v, ok := sdk.Config("labels"); ok && v != "" {
		labels = strings.Split(v, ",")
	}
	if v, ok := sdk.Config("top_k"); ok {
		if k, err := strconv.Atoi(v); err == nil && k > 0 {
			topK = k
		}
	}
	v, _ := sdk.Config("softmax")
	doSoftma = v == "true"
}

func postprocess(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if len(in) == 0 {
		return nil, errors.New("no input")
	}
	config()
	p := in[0]
	// The outputs are declared [N, k]: scores of another rank gave labels
	// of that rank ([k] for [C], [N, T, k] for [N, T, C]), which clients
	// reading ModelMetadata do not expect. One row of scores [C] is a
	// batch of one.
	switch s := p.Shape(); {
	case len(s) == 1:
		var err error
		if p, err = sdk.Reshape(p, 1, s[0]); err != nil {
			return nil, err
		}
	case len(s) != 2:
		return nil, fmt.Errorf("cls-post: scores %q of shape %v: want [N, C] (or [C])", p.Name(), s)
	case s[1] == 0:
		return nil, fmt.Errorf("cls-post: scores %q of shape %v: no classes", p.Name(), s)
	}
	if doSoftma {
		var err error
		if p, err = sdk.Softmax(p, -1); err != nil {
			return nil, err
		}
	}
	// A top_k above the number of classes returns them all (the host's
	// topk refuses k past the last dimension: every call failed).
	k := topK
	if c := p.Shape()[1]; int64(k) > c {
		k = int(c)
	}
	vals, idx, err := sdk.TopK(p, k)
	if err != nil {
		return nil, err
	}
	ids, err := idx.Int64()
	if err != nil {
		return nil, err
	}
	names := make([][]byte, len(ids))
	for i, id := range ids {
		if id >= 0 && int(id) < len(labels) {
			names[i] = []byte(labels[id])
		} else {
			names[i] = []byte(strconv.FormatInt(id, 10))
		}
	}
	return []*sdk.Tensor{
		sdk.Strings("label", idx.Shape(), names),
		vals.Named("score"),
	}, nil
}
