package guest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

func sigTensor(js string) []*tensor.Tensor {
	return []*tensor.Tensor{{Name: "signature", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{[]byte(js)}}}
}

// A signature is read as abi.SignatureTensor documents it: a left-out side
// is undeclared (nil), an empty one declares none; a left-out shape is any
// rank, [] a scalar.
func TestParseSignature(t *testing.T) {
	sig, err := parseSignature(sigTensor(`{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
		{"name": "k", "datatype": "INT64", "shape": []}, {"name": "any", "datatype": "FP32"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(sig.Inputs); got != "[{image BYTES [-1]} {k INT64 []} {any FP32 []}]" {
		t.Fatalf("inputs %s", got)
	}
	if sig.Inputs[1].Shape == nil || sig.Inputs[2].Shape != nil || sig.Outputs != nil {
		t.Fatalf("scalar shape %#v, any-rank shape %#v, outputs %#v", sig.Inputs[1].Shape, sig.Inputs[2].Shape, sig.Outputs)
	}
	sig, err = parseSignature(sigTensor(`{"outputs": []}`))
	if err != nil || sig.Inputs != nil || sig.Outputs == nil || len(sig.Outputs) != 0 {
		t.Fatalf("empty outputs: %#v %v", sig, err)
	}
}

// Every malformed signature is refused with a reason, never half taken.
func TestParseSignatureRefuses(t *testing.T) {
	long := strings.Repeat("n", abi.MaxSignatureName+1)
	many := "[" + strings.Repeat(`{"name":"a","datatype":"FP32"},`, abi.MaxSignatureTensors) + `{"name":"b","datatype":"FP32"}]`
	for _, c := range []struct {
		name string
		out  []*tensor.Tensor
		want string
	}{
		{"no tensor", nil, "want one BYTES tensor"},
		{"wrong name", []*tensor.Tensor{{Name: "sig", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{[]byte(`{}`)}}}, "want one BYTES tensor"},
		{"two elements", []*tensor.Tensor{{Name: "signature", DType: tensor.Bytes, Shape: []int64{2}, Strings: [][]byte{[]byte(`{}`), []byte(`{}`)}}}, "want one BYTES tensor"},
		{"not JSON", sigTensor(`inputs: x`), "signature JSON"},
		{"trailing", sigTensor(`{} {}`), "data after the object"},
		{"unknown key", sigTensor(`{"input": []}`), "unknown field"},
		{"unknown tensor key", sigTensor(`{"inputs": [{"name": "x", "datatype": "FP32", "dims": [1]}]}`), "unknown field"},
		{"empty name", sigTensor(`{"inputs": [{"datatype": "FP32", "shape": [1]}]}`), "empty name"},
		{"long name", sigTensor(`{"inputs": [{"name": "` + long + `", "datatype": "FP32"}]}`), "at most 1024"},
		{"control", sigTensor(`{"outputs": [{"name": "a\nb", "datatype": "FP32"}]}`), "control character"},
		{"not UTF-8", sigTensor("{\"outputs\": [{\"name\": \"a\xffb\", \"datatype\": \"FP32\"}]}"), "not UTF-8"},
		{"twice", sigTensor(`{"inputs": [{"name": "x", "datatype": "FP32"}, {"name": "x", "datatype": "INT64"}]}`), `"x" listed twice`},
		{"dtype", sigTensor(`{"inputs": [{"name": "x", "datatype": "FLOAT"}]}`), `unknown datatype "FLOAT"`},
		{"dim", sigTensor(`{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}`), "-1 for any size"},
		{"rank", sigTensor(`{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}`), "rank 17"},
		{"many", sigTensor(`{"outputs": ` + many + `}`), "1025 outputs"},
		{"large", sigTensor(`{"inputs": [], "pad": "` + strings.Repeat(" ", abi.MaxSignatureBytes) + `"}`), "bytes of JSON"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sig, err := parseSignature(c.out)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v (%+v), want an error with %q", err, sig, c.want)
			}
		})
	}
}
