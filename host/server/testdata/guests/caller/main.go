// Command caller is a preprocess guest that runs its input through the
// deployment "busy" (as a pipeline stage calling another model does) and
// passes the host's error on.
package main

import "github.com/cyxwiz/cyxwiz-node/guests/sdk"

func init() { sdk.Register(sdk.Handlers{Preprocess: pre}) }

func main() {}

func pre(in []*sdk.Tensor) ([]*sdk.Tensor, error) {
	return sdk.Infer("busy", in...)
}
