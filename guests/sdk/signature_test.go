package sdk

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// The hand-written JSON of a Signature is what encoding/json reads back:
// names with quotes, backslashes and non-ASCII, nil
// and empty lists and shapes.
func TestSignatureJSON(t *testing.T) {
	sig := Signature{
		Inputs: []TensorMeta{
			{Name: "im\"a\\ge é\u2028", DType: Bytes, Shape: []int64{-1}},
			{Name: "k", DType: Int64, Shape: []int64{}},
			{Name: "any", DType: FP16},
		},
		Outputs: []TensorMeta{},
	}
	b, err := sig.appendJSON(nil)
	if err != nil {
		t.Fatal(err)
	}
	type meta struct {
		Name     string  `json:"name"`
		Datatype string  `json:"datatype"`
		Shape    []int64 `json:"shape"`
	}
	var got struct {
		Inputs  *[]meta `json:"inputs"`
		Outputs *[]meta `json:"outputs"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	want := []meta{{"im\"a\\ge é\u2028", "BYTES", []int64{-1}}, {"k", "INT64", []int64{}}, {"any", "FP16", nil}}
	if got.Inputs == nil || !reflect.DeepEqual(*got.Inputs, want) || got.Outputs == nil || len(*got.Outputs) != 0 {
		t.Fatalf("%s read back as %+v / %+v", b, got.Inputs, got.Outputs)
	}

	// A side left nil is left out.
	if b, err := (Signature{Outputs: []TensorMeta{{Name: "y", DType: FP32, Shape: []int64{-1, 3}}}}).appendJSON(nil); err != nil ||
		string(b) != `{"outputs":[{"name":"y","datatype":"FP32","shape":[-1,3]}]}` {
		t.Fatalf("outputs only: %s %v", b, err)
	}
	// What the node would refuse is the guest's own error.
	for _, bad := range []TensorMeta{{Name: "a\xffb", DType: FP32}, {Name: "x", DType: 0}, {Name: "x", DType: Bytes + 1},
		{Name: "", DType: FP32}, {Name: strings.Repeat("n", 1025), DType: FP32}, {Name: "a\nb", DType: FP32}, {Name: "a\x7f", DType: FP32},
		{Name: "x", DType: FP32, Shape: make([]int64, 17)}, {Name: "x", DType: FP32, Shape: []int64{-2}}} {
		if _, err := (Signature{Inputs: []TensorMeta{bad}}).appendJSON(nil); err == nil {
			t.Errorf("%.80q %v %v encoded", bad.Name, bad.DType, bad.Shape)
		}
	}
	x := TensorMeta{Name: "x", DType: FP32}
	if _, err := (Signature{Outputs: []TensorMeta{x, x}}).appendJSON(nil); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a name listed twice: %v", err)
	}
	if _, err := (Signature{Outputs: make([]TensorMeta, 1025)}).appendJSON(nil); err == nil || !strings.Contains(err.Error(), "1025") {
		t.Errorf("1025 outputs: %v", err)
	}
}
