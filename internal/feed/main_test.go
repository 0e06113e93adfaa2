package feed

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine running (a fleet's publisher,
// reader or group loop not stopped by Close).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
