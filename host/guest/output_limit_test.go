package guest

import (
	"context"
	"testing"

	"github.com/tetratelabs/wazero"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/hostfuncs/cyxwiz"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// Outputs named by handle count what the response carries against
// max_output_size: for BYTES, 4 bytes per element besides their bytes (an
// output of empty elements counted 0 however often it was listed).
func TestBytesHandleOutputsCountAgainstMaxOutputSize(t *testing.T) {
	ctx := context.Background()
	r := wazero.NewRuntime(ctx)
	defer r.Close(ctx)
	wasm := []byte{0, 'a', 's', 'm', 1, 0, 0, 0,
		5, 3, 1, 0, 4, // memory section: one memory, 4 pages
		7, 10, 1, 6, 'm', 'e', 'm', 'o', 'r', 'y', 2, 0} // export "memory"
	m, err := r.Instantiate(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 1 << 20
	p := &Pool{rt: &Runtime{cfg: Config{MaxOutputBytes: limit}}, cfg: PoolConfig{Name: "review"}}
	sess := cyxwiz.NewSession(cyxwiz.Env{})
	inst := &instance{mem: m.Memory(), sess: sess}

	// A host tensor of 2^20 empty BYTES elements (a guest makes one with
	// tensor_new from 4 MiB of zeros, or with concat from far less).
	const n = 1 << 20
	h := sess.Put(&tensor.Tensor{Name: "s", DType: tensor.Bytes, Shape: []int64{n}, Strings: make([][]byte, n)})
	list := make([]abi.Tensor, 1000)
	for i := range list {
		list[i] = abi.Tensor{Name: "o", DType: abi.DTypeBytes, Shape: []int64{n}, Handle: h}
	}
	b := abi.Encode(nil, list)
	if !inst.mem.Write(0, b) {
		t.Fatal("write")
	}
	out, err := p.output("postprocess", inst, abi.Pack(0, uint32(len(b))))
	if err != nil {
		return // refused: fine
	}
	var resp int64
	for _, o := range out {
		resp += int64(tensor.StringsSize(o.Strings))
	}
	t.Logf("output list of %d bytes accepted: %d outputs whose response content is %d MiB, max_output_size %d MiB",
		len(b), len(out), resp>>20, limit>>20)
	if resp > limit {
		t.Errorf("guest output accepted with %d MiB of response content under max_output_size of %d MiB", resp>>20, limit>>20)
	}
}
