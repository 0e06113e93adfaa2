package harness

// Heap measurements: what a test must wait for before the heap says what regcache holds.

import (
	"runtime"
	"strings"
	"time"
)

// Settle waits, at most 12 s, until what earlier work left behind can be collected, and
// collects it. A stopped fasthttp server stays reachable (with its whole regcache: cache,
// connections, pools) from its worker-pool cleaner goroutine until that wakes from its
// 10 s sleep, and sync.Pool keeps objects through one collection as victims. keep is the
// number of running fasthttp servers the caller still has.
func Settle(keep int) {
	deadline := time.Now().Add(12 * time.Second)
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		if strings.Count(string(buf[:n]), "fasthttp.(*workerPool).Start.func2") <= keep {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	Collect()
}

// Collect collects garbage three times: sync.Pool victims go on the second.
func Collect() {
	for range 3 {
		runtime.GC()
	}
}
