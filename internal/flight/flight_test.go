package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGroupCoalesces(t *testing.T) {
	var g Group[int]
	var runs atomic.Int32
	release := make(chan struct{})
	const n = 100
	var wg sync.WaitGroup
	var shared atomic.Int32
	results := make(chan int, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err, s := g.Do(context.Background(), "k", func() (int, error) {
				runs.Add(1)
				<-release
				return 42, nil
			})
			if err != nil {
				t.Error(err)
			}
			if s {
				shared.Add(1)
			}
			results <- v
		}()
	}
	// Wait until every caller has joined before releasing the one call.
	for deadline := time.Now().Add(5 * time.Second); g.Waiting("k")+1 < n; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d callers joined", g.Waiting("k"))
		}
		time.Sleep(time.Millisecond)
	}
	if g.InFlight() != 1 {
		t.Fatalf("in flight = %d, want 1", g.InFlight())
	}
	close(release)
	wg.Wait()
	close(results)
	for v := range results {
		if v != 42 {
			t.Fatalf("got %d, want 42", v)
		}
	}
	if shared.Load() != n-1 {
		t.Fatalf("%d callers shared, want %d", shared.Load(), n-1)
	}
	if runs.Load() != 1 {
		t.Fatalf("fn ran %d times, want 1", runs.Load())
	}
	if g.InFlight() != 0 {
		t.Fatalf("in flight after = %d", g.InFlight())
	}
}

func TestGroupSharesErrors(t *testing.T) {
	var g Group[int]
	boom := errors.New("boom")
	_, err, _ := g.Do(context.Background(), "k", func() (int, error) { return 0, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

func TestGroupWaiterGivesUpWorkGoesOn(t *testing.T) {
	var g Group[int]
	done := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err, _ := g.Do(ctx, "k", func() (int, error) {
		time.Sleep(50 * time.Millisecond)
		close(done)
		return 1, nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline", err)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("work was abandoned with its waiter")
	}
}

func TestGroupRecoversPanics(t *testing.T) {
	var g Group[int]
	_, err, _ := g.Do(context.Background(), "k", func() (int, error) { panic("bad") })
	if err == nil {
		t.Fatal("want an error from a panicking call")
	}
	if g.InFlight() != 0 {
		t.Fatal("panicking call left in flight")
	}
}
