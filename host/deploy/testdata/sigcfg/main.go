// Command sigcfg is a guest for the deployment tests of declared
// signatures: as preprocess or postprocess it passes its inputs on
// unchanged; its signature depends on the "sig" config value: "x" (the
// default) declares input "X" FP32 [-1, 3] and output "Y" FP32 [-1, 2],
// "none" declares nothing, "error" fails, "twice" lists "X" twice, "loop"
// never returns, "trap" panics, "grow" takes memory until none is left,
// "liar" declares output "Y" INT64 [-1, 2] (what it passes on is FP32) and
// "narrow" declares output "Y" FP32 [-1, 3] (it passes on [N, 2]).
package main

import (
	"errors"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() {
	sdk.Register(sdk.Handlers{Preprocess: pass, Postprocess: pass, Signature: signature})
}

func main() {}

// spin and hoard keep the loop and the allocations of "loop" and "grow".
var (
	spin  int
	hoard [][]byte
)

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
	case "loop":
		for {
			spin++
		}
	case "trap":
		panic("signature trapped")
	case "grow":
		for {
			hoard = append(hoard, make([]byte, 1<<20))
		}
	case "liar":
		return sdk.Signature{Outputs: []sdk.TensorMeta{{Name: "Y", DType: sdk.Int64, Shape: []int64{-1, 2}}}}, nil
	case "narrow":
		return sdk.Signature{Outputs: []sdk.TensorMeta{{Name: "Y", DType: sdk.FP32, Shape: []int64{-1, 3}}}}, nil
	default:
		return sdk.Signature{Inputs: []sdk.TensorMeta{x}, Outputs: []sdk.TensorMeta{{Name: "Y", DType: sdk.FP32, Shape: []int64{-1, 2}}}}, nil
	}
}
