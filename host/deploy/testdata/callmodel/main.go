// Command callmodel is a guest for the deployment tests that runs the
// model its "target" config value names, through the infer host function:
// as preprocess it runs it on its inputs, then passes its inputs on
// unchanged (with "target" naming another deployment whose guest names
// this one, the two call each other); as a custom format it answers with
// that model's outputs (its model file is ignored); as a batch policy it
// runs it on X = [[1, 1, 1]], then runs the batch (or fails with the
// model's error).
package main

import "github.com/cyxwiz/cyxwiz-node/guests/sdk"

func init() {
	sdk.Register(sdk.Handlers{Preprocess: pre, FormatLoad: load, FormatInfer: infer, BatchPolicy: policy})
}

func main() {}

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if _, err := infer(in); err != nil {
		return nil, err
	}
	return in, nil
}

func load([]byte) error { return nil }

func infer(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	target, _ := sdk.Config("target")
	return sdk.Infer(target, in...)
}

func policy(q sdk.QueueState) (sdk.Decision, error) {
	x := sdk.Float32s("X", []int64{1, 3}, []float32{1, 1, 1})
	if _, err := infer([]*sdk.Tensor{x}); err != nil {
		return sdk.Decision{}, err
	}
	return sdk.Decision{Run: q.Queued}, nil
}
