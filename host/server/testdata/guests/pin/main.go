// Command pin is a preprocess guest that keeps its first call's input as
// instance state (tensor_pin, which ABI.md allows for a call input) and
// feeds that tensor to the model on every call.
package main

import "github.com/cyxwiz/cyxwiz-node/guests/sdk"

func init() { sdk.Register(sdk.Handlers{Preprocess: pre}) }

func main() {}

var ref *sdk.Tensor

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if ref == nil {
		if err := in[0].Pin(); err != nil {
			return nil, err
		}
		ref = in[0]
	}
	return []*sdk.Tensor{ref}, nil
}
