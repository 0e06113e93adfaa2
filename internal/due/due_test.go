package due

import (
	"testing"
	"time"
)

func TestNextInTimeOrder(t *testing.T) {
	q := New[string]()
	now := time.Now()
	q.Push(now.Add(60*time.Millisecond), "c")
	q.Push(now.Add(20*time.Millisecond), "a")
	q.Push(now.Add(40*time.Millisecond), "b")
	stop := make(chan struct{})
	for _, want := range []string{"a", "b", "c"} {
		v, ok := q.Next(stop)
		if !ok || v != want {
			t.Fatalf("Next = %q, %v; want %q", v, ok, want)
		}
		if time.Now().Before(now.Add(20 * time.Millisecond)) {
			t.Fatalf("%q handed out before it was due", v)
		}
	}
	if q.Len() != 0 {
		t.Fatalf("Len %d after all were handed out", q.Len())
	}
}

// TestEarlierPushWakes: a waiting Next takes an item pushed before the one it waits for.
func TestEarlierPushWakes(t *testing.T) {
	q := New[int]()
	q.Push(time.Now().Add(time.Hour), 1)
	go func() { time.Sleep(20 * time.Millisecond); q.Push(time.Now(), 2) }()
	got := make(chan int)
	go func() { v, _ := q.Next(make(chan struct{})); got <- v }()
	select {
	case v := <-got:
		if v != 2 {
			t.Fatalf("Next = %d; want the earlier push", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Next did not wake for an earlier push")
	}
}

func TestStop(t *testing.T) {
	q := New[int]()
	q.Push(time.Now().Add(time.Hour), 1)
	stop := make(chan struct{})
	close(stop)
	if _, ok := q.Next(stop); ok {
		t.Fatal("Next after stop handed out an item not due")
	}
}
