package cache

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStoreCloseWhileSetting: a flight that outlives its waiters may store its answer while
// the cache is being closed (shutdown). That must neither panic (a send on ristretto's
// closed buffer) nor hang (a Wait that no one will ever answer).
func TestStoreCloseWhileSetting(t *testing.T) {
	for round := range 50 {
		s, err := newStore(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		panics := make(chan any, 8)
		for w := range 8 {
			wg.Go(func() {
				defer func() {
					if p := recover(); p != nil {
						panics <- p
					}
				}()
				for i := 0; !stop.Load(); i++ {
					s.set(fmt.Sprintf("k%d-%d", w, i), &negativeEntry{}, 10, time.Minute)
				}
			})
		}
		time.Sleep(time.Duration(round%5) * 100 * time.Microsecond)
		s.close()
		stop.Store(true)
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: a set still hangs 5 s after close", round)
		}
		select {
		case p := <-panics:
			t.Fatalf("round %d: set panicked during close: %v", round, p)
		default:
		}
	}
}
