package loaders

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Registry maps format names to loaders. It is built once at start-up with
// every loader this build has, plus the formats it knows of but cannot serve,
// so that a deployment for either gets a precise answer.
type Registry struct {
	loaders map[string]Loader
	order   []string
}

// NewRegistry returns a registry holding ls. A later loader with the same
// format name replaces an earlier one.
func NewRegistry(ls ...Loader) *Registry {
	r := &Registry{loaders: make(map[string]Loader)}
	for _, l := range ls {
		name := strings.ToLower(l.Format())
		if _, dup := r.loaders[name]; !dup {
			r.order = append(r.order, name)
		}
		r.loaders[name] = l
	}
	return r
}

// Get returns the loader for format (case-insensitive). It fails with
// ErrUnknownFormat when no such format exists and with ErrUnavailable (and
// the reason) when it exists but cannot be used on this node.
func (r *Registry) Get(format string) (Loader, error) {
	l, ok := r.loaders[strings.ToLower(format)]
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownFormat, format, strings.Join(r.order, ", "))
	}
	if err := l.Available(); err != nil {
		return nil, err
	}
	return l, nil
}

// Load finds the loader for format and loads path with it.
func (r *Registry) Load(ctx context.Context, format, path string, opts Options) (Model, error) {
	l, err := r.Get(format)
	if err != nil {
		return nil, err
	}
	return l.Load(ctx, path, opts)
}

// FormatStatus says whether one format can be served here.
type FormatStatus struct {
	Format    string
	Available bool
	Reason    string // why not, when Available is false
}

// Formats lists every registered format in registration order.
func (r *Registry) Formats() []FormatStatus {
	out := make([]FormatStatus, 0, len(r.order))
	for _, name := range r.order {
		fs := FormatStatus{Format: name, Available: true}
		if err := r.loaders[name].Available(); err != nil {
			fs.Available, fs.Reason = false, err.Error()
		}
		out = append(out, fs)
	}
	return out
}

// Known reports whether format names a registered format, available or not.
func (r *Registry) Known(format string) bool {
	return slices.Contains(r.order, strings.ToLower(format))
}

// Unsupported is a Loader for a format this build knows of but cannot load;
// Available always returns the reason.
type Unsupported struct {
	Name   string
	Reason string
}

// Format returns the format name.
func (u Unsupported) Format() string { return u.Name }

// Available returns why the format cannot be loaded.
func (u Unsupported) Available() error {
	return fmt.Errorf("%w: %s: %s", ErrUnavailable, u.Name, u.Reason)
}

// Load always fails with the reason.
func (u Unsupported) Load(context.Context, string, Options) (Model, error) {
	return nil, u.Available()
}

var _ Loader = Unsupported{}
