package loaders

import (
	"fmt"
	"slices"

	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// CheckInputs verifies that inputs fit a model's input specs: every input
// named once and known, every model input present, the right datatype, the
// right rank, fixed dimensions matched, and data that holds exactly the
// elements its shape describes. Errors wrap ErrInvalidInput and say what the
// model wants, so a client can fix its request.
func CheckInputs(specs []TensorSpec, inputs []*tensor.Tensor) error {
	if len(inputs) != len(specs) {
		return fmt.Errorf("%w: got %d inputs, model wants %d (%s)", ErrInvalidInput, len(inputs), len(specs), specNames(specs))
	}
	for i, in := range inputs {
		if in == nil {
			return fmt.Errorf("%w: input %d is nil", ErrInvalidInput, i)
		}
		j := slices.IndexFunc(specs, func(s TensorSpec) bool { return s.Name == in.Name })
		if j < 0 {
			return fmt.Errorf("%w: unknown input %q (model inputs: %s)", ErrInvalidInput, in.Name, specNames(specs))
		}
		for _, other := range inputs[:i] {
			if other.Name == in.Name {
				return fmt.Errorf("%w: input %q given twice", ErrInvalidInput, in.Name)
			}
		}
		if err := CheckTensor(specs[j], in); err != nil {
			return err
		}
	}
	return nil
}

// CheckTensor verifies one tensor against its spec.
func CheckTensor(spec TensorSpec, t *tensor.Tensor) error {
	if t.DType != spec.DType {
		return fmt.Errorf("%w: input %q: datatype %v, model wants %v", ErrInvalidInput, t.Name, t.DType, spec.DType)
	}
	// A nil spec shape is an input the model declares no shape for: any
	// rank (an empty, non-nil shape is a scalar).
	if spec.Shape != nil && len(t.Shape) != len(spec.Shape) {
		return fmt.Errorf("%w: input %q: shape %v has rank %d, model wants rank %d %v", ErrInvalidInput, t.Name, t.Shape, len(t.Shape), len(spec.Shape), spec.Shape)
	}
	for k, d := range spec.Shape {
		if t.Shape[k] < 0 {
			return fmt.Errorf("%w: input %q: shape %v has a negative dimension", ErrInvalidInput, t.Name, t.Shape)
		}
		if d >= 0 && t.Shape[k] != d {
			return fmt.Errorf("%w: input %q: shape %v, model wants %v (dimension %d must be %d)", ErrInvalidInput, t.Name, t.Shape, spec.Shape, k, d)
		}
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	return nil
}

// CheckOutputs verifies that every requested output name exists.
func CheckOutputs(specs []TensorSpec, names []string) error {
	for _, n := range names {
		if !slices.ContainsFunc(specs, func(s TensorSpec) bool { return s.Name == n }) {
			return fmt.Errorf("%w: unknown output %q (model outputs: %s)", ErrInvalidInput, n, specNames(specs))
		}
	}
	return nil
}

func specNames(specs []TensorSpec) string {
	s := ""
	for i, sp := range specs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %v%v", sp.Name, sp.DType, sp.Shape)
	}
	return s
}
