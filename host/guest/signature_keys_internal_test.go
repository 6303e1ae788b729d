package guest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// A signature's keys are the ones ABI.md spells, each once an object, in
// a JSON object: encoding/json alone matched "Inputs", "NAME" or "ſhape"
// (U+017F) as known keys, kept the last of two keys given twice, and read
// null as a signature declaring nothing.
func TestParseSignatureKeys(t *testing.T) {
	x := `{"name": "x", "datatype": "FP32", "shape": [-1]}`
	for _, c := range []struct{ name, js, want string }{
		{"capital side", `{"Inputs": [` + x + `]}`, `unknown key "Inputs"`},
		{"capital key", `{"inputs": [{"NAME": "x", "datatype": "FP32"}]}`, `unknown key "NAME"`},
		{"folded key", `{"outputs": [{"name": "x", "datatype": "FP32", "ſhape": [1]}]}`, `unknown key "ſhape"`},
		{"side twice", `{"inputs": [` + x + `], "inputs": [{"name": "y", "datatype": "INT64"}]}`, `key "inputs" given twice`},
		{"side undone", `{"inputs": [` + x + `], "INPUTS": null}`, `unknown key "INPUTS"`},
		{"name twice", `{"inputs": [{"name": "x", "name": "y", "datatype": "FP32"}]}`, `key "name" given twice`},
		{"shape twice", `{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "shape": null}]}`, `key "shape" given twice`},
		{"null", `null`, "not an object"},
		{"BOM", "\ufeff{}", "invalid character"},
		{"exponent", `{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1e3]}]}`, "cannot unmarshal"},
		{"huge", `{"inputs": [{"name": "x", "datatype": "FP32", "shape": [9223372036854775808]}]}`, "cannot unmarshal"},
		{"fraction", `{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1.5]}]}`, "cannot unmarshal"},
		{"nested junk", `{"inputs": [{"name": "x", "datatype": "FP32", "shape": [[1]]}]}`, "cannot unmarshal"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sig, err := parseSignature(sigTensor(c.js))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v (%+v), want an error with %q", err, sig, c.want)
			}
		})
	}
	// What is well spelt is read whatever its whitespace and order, keys'
	// names as values included, and -0 is 0.
	sig, err := parseSignature(sigTensor(" \r\n\t{ \"outputs\" : [ {\"shape\":[-0, 9223372036854775807], \"datatype\":\"BYTES\", \"name\":\"inputs\"} ] ,\n\"inputs\":null } \n"))
	if err != nil || sig.Inputs != nil || fmt.Sprint(sig.Outputs) != "[{inputs BYTES [0 9223372036854775807]}]" {
		t.Fatalf("%+v %v", sig, err)
	}
	if sig, err := parseSignature(sigTensor(`{}`)); err != nil || sig.Inputs != nil || sig.Outputs != nil {
		t.Fatalf("{}: %+v %v", sig, err)
	}
}

// A name may hold U+FFFD like any other character (it was refused as "not
// UTF-8", the character encoding/json puts for bytes that are not); bytes
// that are not UTF-8 are refused wherever they are.
func TestParseSignatureReplacementCharacter(t *testing.T) {
	sig, err := parseSignature(sigTensor(`{"inputs": [{"name": "a` + "\uFFFD" + `b", "datatype": "FP32"}]}`))
	if err != nil || len(sig.Inputs) != 1 || sig.Inputs[0].Name != "a\uFFFDb" {
		t.Fatalf("%+v %v", sig, err)
	}
	for _, js := range []string{
		"{\"inputs\": [{\"name\": \"a\xffb\", \"datatype\": \"FP32\"}]}",
		"{\"inputs\": [{\"name\": \"ab\", \"datatype\": \"FP32\xff\"}]}",
	} {
		if sig, err := parseSignature(sigTensor(js)); err == nil || !strings.Contains(err.Error(), "not UTF-8") {
			t.Errorf("%q: %+v %v, want an error saying not UTF-8", js, sig, err)
		}
	}
}

// parseSignature reads a guest's bytes: it never panics, and what it takes
// keeps ABI.md's bounds and reads back the same once written as JSON.
func FuzzParseSignature(f *testing.F) {
	for _, s := range []string{
		`{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}], "outputs": [{"name": "y", "datatype": "FP32"}]}`,
		`{"outputs": []}`, `{}`, `null`, `{"inputs": [{"name": "x", "name": "x", "datatype": "FP32"}]}`,
		`{"Inputs": null}`, `{"inputs": [{"name": "a", "datatype": "INT64", "shape": []}, {"name": "b", "datatype": "BOOL", "shape": [0, -1]}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		sig, err := parseSignature([]*tensor.Tensor{{Name: "signature", DType: tensor.Bytes, Shape: []int64{1}, Strings: [][]byte{js}}})
		if err != nil {
			return
		}
		type meta struct {
			Name     string  `json:"name"`
			Datatype string  `json:"datatype"`
			Shape    []int64 `json:"shape"`
		}
		var again struct {
			Inputs  *[]meta `json:"inputs,omitempty"`
			Outputs *[]meta `json:"outputs,omitempty"`
		}
		for side, list := range map[string][]loaders.TensorSpec{"inputs": sig.Inputs, "outputs": sig.Outputs} {
			if len(list) > abi.MaxSignatureTensors {
				t.Fatalf("%d %s", len(list), side)
			}
			seen := map[string]bool{}
			metas := []meta{}
			for _, s := range list {
				if s.Name == "" || len(s.Name) > abi.MaxSignatureName || seen[s.Name] || !s.DType.Valid() || len(s.Shape) > 16 {
					t.Fatalf("%s: %+v taken", side, s)
				}
				seen[s.Name] = true
				for _, d := range s.Shape {
					if d < -1 {
						t.Fatalf("%s: %+v taken", side, s)
					}
				}
				metas = append(metas, meta{s.Name, s.DType.String(), s.Shape})
			}
			if list != nil && side == "inputs" {
				again.Inputs = &metas
			} else if list != nil {
				again.Outputs = &metas
			}
		}
		b, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseSignature(sigTensor(string(b)))
		if err != nil || fmt.Sprintf("%#v", back) != fmt.Sprintf("%#v", sig) {
			t.Fatalf("%s read back from %s as %#v (%v), was %#v", js, b, back, err, sig)
		}
	})
}
