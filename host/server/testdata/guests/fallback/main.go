// Command fallback is a preprocess guest that tries an optional model,
// falls back to one it may call (which answers), and then rejects the
// request for a reason of its own.
package main

import (
	"errors"

	"github.com/cyxwiz/cyxwiz-node/guests/sdk"
)

func init() { sdk.Register(sdk.Handlers{Preprocess: pre}) }

func main() {}

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	if _, err := sdk.Infer("optional", in...); err == nil {
		return nil, errors.New("optional model answered")
	}
	if _, err := sdk.Infer("spare", in...); err != nil {
		return nil, err
	}
	return nil, errors.New("input rejected by the guest")
}
