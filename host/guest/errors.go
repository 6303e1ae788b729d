package guest

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/tetratelabs/wazero/sys"
)

// Errors a caller branches on; the gRPC layer maps them to codes (see the
// package documentation). Each is wrapped with the pool's name, the entry
// point and, for a failed instance, the first lines of its stderr.
var (
	// ErrDeadline: the call ran past its deadline and the instance was
	// stopped. It is always joined with context.DeadlineExceeded.
	ErrDeadline = errors.New("guest deadline exceeded")
	// ErrMemory: the guest ran out of memory (its linear memory limit or
	// its host tensor limit).
	ErrMemory = errors.New("guest out of memory")
	// ErrTrap: the guest trapped, panicked or exited.
	ErrTrap = errors.New("guest trapped")
	// ErrABI: the module does not follow guest ABI v1 (version, exports,
	// imports, signatures): the deployment cannot use it.
	ErrABI = errors.New("guest ABI violation")
	// ErrBadOutput: the guest returned an output outside its memory, larger
	// than Config.MaxOutputBytes, malformed, or naming an unknown handle.
	ErrBadOutput = errors.New("guest returned a bad output")
	// ErrGuest: the guest ran to completion and reported an error (bad
	// input, missing config). The instance is kept.
	ErrGuest = errors.New("guest reported an error")
)

// stderrLines is how many lines of a failed instance's stderr an error
// carries.
const stderrLines = 5

// classify turns the error of a wazero call into one of the sentinels.
func classify(ctx context.Context, err error, stderr string, hostLimit bool) error {
	var exit *sys.ExitError
	isExit := errors.As(err, &exit)
	switch {
	case isExit && exit.ExitCode() == sys.ExitCodeDeadlineExceeded,
		errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w (%w)", ErrDeadline, context.DeadlineExceeded)
	case isExit && exit.ExitCode() == sys.ExitCodeContextCanceled,
		errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("%w: %w", ErrTrap, context.Canceled)
	case hostLimit || strings.Contains(stderr, "out of memory"):
		return fmt.Errorf("%w: %s%s", ErrMemory, firstLines(err.Error(), 1), stderrSuffix(stderr))
	}
	// wazero's message goes on with the wasm stack trace: the caller logs
	// it, the error keeps the first line.
	return fmt.Errorf("%w: %s%s", ErrTrap, firstLines(err.Error(), 1), stderrSuffix(stderr))
}

func stderrSuffix(s string) string {
	if s = firstLines(s, stderrLines); s == "" {
		return ""
	}
	return "; stderr: " + s
}

func firstLines(s string, n int) string {
	s = strings.TrimSpace(s)
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, " | ")
}
