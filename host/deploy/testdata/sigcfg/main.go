// Command sigcfg is a guest for the deployment tests of declared
// signatures: as preprocess or postprocess it passes its inputs on
// unchanged; its signature depends on the "sig" config value: "x" (the
// default) declares input "X" FP32 [-1, 3] and output "Y" FP32 [-1, 2],
// "none" declares nothing, "error" fails, "twice" lists "X" twice.
package main

import (
	"errors"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() {
	sdk.Register(sdk.Handlers{Preprocess: pass, Postprocess: pass, Signature: signature})
}

func main() {}

func pass(in []*sdk.Tensor) ([]*sdk.Tensor, error) { return in, nil }

func signature() (sdk.Signature, error) {
	x := sdk.TensorMeta{Name: "X", DType: sdk.FP32, Shape: []int64{-1, 3}}
	switch mode, _ := sdk.Config("sig"); mode {
	case "none":
		return sdk.Signature{}, nil
	case "error":
		return sdk.Signature{}, errors.New("no signature today")
	case "twice":
		return sdk.Signature{Inputs: []sdk.TensorMeta{x, x}}, nil
	default:
		return sdk.Signature{Inputs: []sdk.TensorMeta{x}, Outputs: []sdk.TensorMeta{{Name: "Y", DType: sdk.FP32, Shape: []int64{-1, 2}}}}, nil
	}
}
