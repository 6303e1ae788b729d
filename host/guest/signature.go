package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/cyxwiz/cyxwiz-node/guests/abi"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// EntrySignature is the optional entry point that declares a guest's
// tensors (abi.SignatureTensor).
const EntrySignature = abi.Signature

// Signature is what a guest declares of the tensors it takes and gives. A
// nil list was not declared.
type Signature struct {
	Inputs, Outputs []loaders.TensorSpec
}

// Signature calls the guest's signature entry point; ok is false (and sig
// empty) when the guest provides none. A signature the guest returns in
// another form than abi.SignatureTensor documents is an ErrBadOutput.
func (p *Pool) Signature(ctx context.Context) (sig Signature, ok bool, err error) {
	if p.provided&EntrySignature.Bit() == 0 {
		return Signature{}, false, nil
	}
	out, err := p.run(ctx, EntrySignature, nil)
	if err != nil {
		return Signature{}, true, err
	}
	if sig, err = parseSignature(out); err != nil {
		return Signature{}, true, p.errorf(EntrySignature.String(), fmt.Errorf("%w: %w", ErrBadOutput, err))
	}
	return sig, true, nil
}

// parseSignature reads the signature entry point's output.
func parseSignature(out []*tensor.Tensor) (Signature, error) {
	if len(out) != 1 || out[0].Name != abi.SignatureTensor || out[0].DType != tensor.Bytes || len(out[0].Strings) != 1 {
		return Signature{}, fmt.Errorf("want one BYTES tensor %q of one element, got %s", abi.SignatureTensor, describe(out))
	}
	js := out[0].Strings[0]
	if len(js) > abi.MaxSignatureBytes {
		return Signature{}, fmt.Errorf("%d bytes of JSON, at most %d", len(js), abi.MaxSignatureBytes)
	}
	// encoding/json reads bytes that are not UTF-8 as U+FFFD, a character
	// a name may hold.
	if !utf8.Valid(js) {
		return Signature{}, errors.New("signature JSON: not UTF-8")
	}
	type meta struct {
		Name     string  `json:"name"`
		Datatype string  `json:"datatype"`
		Shape    []int64 `json:"shape"`
	}
	var raw struct {
		Inputs  *[]meta `json:"inputs"`
		Outputs *[]meta `json:"outputs"`
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return Signature{}, fmt.Errorf("signature JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Signature{}, errors.New("signature JSON: data after the object")
	}
	if err := checkSignatureKeys(js); err != nil {
		return Signature{}, fmt.Errorf("signature JSON: %w", err)
	}
	convert := func(side string, list *[]meta) ([]loaders.TensorSpec, error) {
		if list == nil {
			return nil, nil
		}
		if len(*list) > abi.MaxSignatureTensors {
			return nil, fmt.Errorf("%d %s, at most %d", len(*list), side, abi.MaxSignatureTensors)
		}
		specs := make([]loaders.TensorSpec, 0, len(*list))
		seen := make(map[string]bool, len(*list))
		for i, m := range *list {
			if err := abi.CheckSignatureName(m.Name); err != nil {
				return nil, fmt.Errorf("%s %d: %w", side, i, err)
			}
			if seen[m.Name] {
				return nil, fmt.Errorf("%s: %q listed twice", side, m.Name)
			}
			seen[m.Name] = true
			if err := abi.CheckSignatureShape(m.Shape); err != nil {
				return nil, fmt.Errorf("%s %q: %w", side, m.Name, err)
			}
			dt, err := tensor.ParseDType(m.Datatype)
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", side, m.Name, err)
			}
			// A shape left out (or null) is any rank, [] a scalar, as
			// loaders.CheckTensor reads them.
			specs = append(specs, loaders.TensorSpec{Name: m.Name, DType: dt, Shape: m.Shape})
		}
		return specs, nil
	}
	var sig Signature
	var err error
	if sig.Inputs, err = convert("inputs", raw.Inputs); err != nil {
		return Signature{}, err
	}
	if sig.Outputs, err = convert("outputs", raw.Outputs); err != nil {
		return Signature{}, err
	}
	return sig, nil
}

// signatureKeys are the keys a signature's objects may have, as spelt.
var signatureKeys = map[string]bool{"inputs": true, "outputs": true, "name": true, "datatype": true, "shape": true}

// checkSignatureKeys checks what encoding/json lets through in js, which
// it decoded: the value is an object (not null), and every object's keys
// are spelt as signatureKeys does (encoding/json matches "Inputs" or
// "ſhape" too) and given once (it keeps the last of two, where
// another reader keeps the first).
func checkSignatureKeys(js []byte) error {
	type frame struct {
		keys    map[string]bool // nil for an array
		wantKey bool
	}
	var stack []frame
	dec := json.NewDecoder(bytes.NewReader(js))
	for first := true; ; first = false {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if first && tok != json.Delim('{') {
			return errors.New("not an object")
		}
		if key, ok := tok.(string); ok && len(stack) > 0 && stack[len(stack)-1].wantKey {
			top := &stack[len(stack)-1]
			switch {
			case !signatureKeys[key]:
				return fmt.Errorf("unknown key %.64q", key)
			case top.keys[key]:
				return fmt.Errorf("key %q given twice", key)
			}
			top.keys[key], top.wantKey = true, false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, frame{keys: map[string]bool{}, wantKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the object holding it wants its next key.
		if n := len(stack); n > 0 && stack[n-1].keys != nil {
			stack[n-1].wantKey = true
		}
	}
}

// describe names the tensors of a list for an error message.
func describe(ts []*tensor.Tensor) string {
	if len(ts) == 0 {
		return "none"
	}
	parts := make([]string, 0, min(len(ts), 4))
	for i, t := range ts {
		if i == 4 {
			parts = append(parts, fmt.Sprintf("and %d more", len(ts)-4))
			break
		}
		parts = append(parts, fmt.Sprintf("%.64q %v%v", t.Name, t.DType, t.Shape))
	}
	return strings.Join(parts, ", ")
}
