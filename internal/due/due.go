// Package due is a queue of things each due at a time: pushed in any order, handed out in
// time order as each falls due, to one goroutine that waits for them. The cache's
// refresh-ahead and the watches each keep one.
package due

import (
	"container/heap"
	"sync"
	"time"
)

// Queue holds values of T until they are due. The zero value is not ready: use New.
type Queue[T any] struct {
	mu    sync.Mutex
	items items[T]
	wake  chan struct{} // told when a push comes before the earliest item
}

// New makes an empty queue.
func New[T any]() *Queue[T] { return &Queue[T]{wake: make(chan struct{}, 1)} }

// Push adds v, due at at.
func (q *Queue[T]) Push(at time.Time, v T) {
	q.mu.Lock()
	heap.Push(&q.items, item[T]{at: at, v: v})
	first := q.items[0].at.Equal(at)
	q.mu.Unlock()
	if first {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// Len is how many values wait.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Next waits for the earliest value to fall due and returns it; false once stop is
// closed. One goroutine calls it.
func (q *Queue[T]) Next(stop <-chan struct{}) (T, bool) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		q.mu.Lock()
		wait := time.Hour
		if len(q.items) > 0 {
			if wait = time.Until(q.items[0].at); wait <= 0 {
				it := heap.Pop(&q.items).(item[T])
				q.mu.Unlock()
				return it.v, true
			}
		}
		q.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-q.wake:
			if !timer.Stop() {
				<-timer.C
			}
		case <-stop:
			var zero T
			return zero, false
		}
	}
}

type item[T any] struct {
	at time.Time
	v  T
}

// items is a min-heap by due time.
type items[T any] []item[T]

func (s items[T]) Len() int           { return len(s) }
func (s items[T]) Less(i, j int) bool { return s[i].at.Before(s[j].at) }
func (s items[T]) Swap(i, j int)      { s[i], s[j] = s[j], s[i] }
func (s *items[T]) Push(x any)        { *s = append(*s, x.(item[T])) }
func (s *items[T]) Pop() any {
	old := *s
	it := old[len(old)-1]
	old[len(old)-1] = item[T]{}
	*s = old[:len(old)-1]
	return it
}
