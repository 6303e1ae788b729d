package server

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is still running
// when they end: every goroutine has an owner and stops with its context
// or Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
