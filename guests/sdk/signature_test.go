package sdk

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// The hand-written JSON of a Signature is what encoding/json reads back:
// names with quotes, backslashes, control characters and non-ASCII, nil
// and empty lists and shapes.
func TestSignatureJSON(t *testing.T) {
	sig := Signature{
		Inputs: []TensorMeta{
			{Name: "im\"a\\ge\t\x01é", DType: Bytes, Shape: []int64{-1}},
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
	want := []meta{{"im\"a\\ge\t\x01é", "BYTES", []int64{-1}}, {"k", "INT64", []int64{}}, {"any", "FP16", nil}}
	if got.Inputs == nil || !reflect.DeepEqual(*got.Inputs, want) || got.Outputs == nil || len(*got.Outputs) != 0 {
		t.Fatalf("%s read back as %+v / %+v", b, got.Inputs, got.Outputs)
	}

	// A side left nil is left out.
	if b, err := (Signature{Outputs: []TensorMeta{{Name: "y", DType: FP32, Shape: []int64{-1, 3}}}}).appendJSON(nil); err != nil ||
		string(b) != `{"outputs":[{"name":"y","datatype":"FP32","shape":[-1,3]}]}` {
		t.Fatalf("outputs only: %s %v", b, err)
	}
	// What the node would refuse is the guest's own error.
	for _, bad := range []TensorMeta{{Name: "a\xffb", DType: FP32}, {Name: "x", DType: 0}, {Name: "x", DType: Bytes + 1}} {
		if _, err := (Signature{Inputs: []TensorMeta{bad}}).appendJSON(nil); err == nil {
			t.Errorf("%+v encoded", bad)
		}
	}
}
