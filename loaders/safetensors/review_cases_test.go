package safetensors_test

import (
	"bytes"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/loaders/safetensors"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A zero-element tensor at the offset where the next tensor starts (what
// the reference writer produces for an empty tensor: [k, k] then [k, k+n])
// is accepted every time: sorting spans by begin only made it depend on
// Go's random map order.
func TestEmptyTensorSharingOffsetIsDeterministic(t *testing.T) {
	b := file(`{"empty":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8)
	ok, failed := 0, 0
	var lastErr error
	for range 200 {
		if _, err := safetensors.Parse(b); err != nil {
			failed++
			lastErr = err
		} else {
			ok++
		}
	}
	if failed > 0 {
		t.Errorf("the same file parsed %d times and failed %d times (last error: %v)", ok, failed, lastErr)
	}
}

// Write refuses a tensor named "__metadata__": its file would not parse
// (the name is taken for the metadata map).
func TestWriteRefusesMetadataName(t *testing.T) {
	var buf bytes.Buffer
	ts := []*tensor.Tensor{tensor.FromSlice("__metadata__", tensor.FP32, []int64{1}, []float32{1})}
	if err := safetensors.Write(&buf, ts, nil); err != nil {
		t.Logf("Write refused it: %v", err)
		return
	}
	if _, err := safetensors.Parse(buf.Bytes()); err != nil {
		t.Errorf("Write succeeded but its output does not parse: %v", err)
	}
}

// Header keys are matched exactly, as the reference (serde) reader does:
// encoding/json alone let "DTYPE" override "dtype", so the same bytes meant
// F32 [2] there and U8 [8] here.
func TestHeaderKeysExact(t *testing.T) {
	b := file(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"DTYPE":"U8","SHAPE":[8]}}`, 8)
	f, err := safetensors.Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := f.Tensors["w"]; got.DType != tensor.FP32 {
		t.Errorf(`tensor "w" read as %v %v; its "dtype" key says F32 [2]`, got.DType, got.Shape)
	}
}
