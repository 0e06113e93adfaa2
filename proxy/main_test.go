package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine running. Only fasthttp's own
// background goroutines are exempt: the process-wide Date header clock (started once,
// never stopped) and a stopped server's worker-pool cleaner, which notices the stop after
// its current sleep (MaxIdleWorkerDuration, 10 s).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}
