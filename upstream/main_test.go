package upstream

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine running (a ristretto cache not
// closed, an upstream transport's idle connections not released, a flight never ended).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
