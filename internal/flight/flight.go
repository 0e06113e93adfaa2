// Package flight coalesces concurrent calls that share a key, for the cache's upstream
// fetches and upstream's token requests alike.
package flight

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Group coalesces concurrent calls that share a key into one: the first caller starts the
// work, the others wait for its result. Unlike x/sync/singleflight the work runs on its own
// goroutine, so a caller that stops waiting (its context ends, or revalidate_wait passes)
// leaves the work running for everyone else and for the cache.
type Group[V any] struct {
	mu     sync.Mutex
	calls  map[string]*call[V]
	joined atomic.Int64 // callers that joined a call in flight, for metrics
}

type call[V any] struct {
	done    chan struct{}
	val     V
	err     error
	waiters int // callers that joined; read by tests and metrics
}

// Do runs fn once per key at a time and waits for it, or for ctx. shared reports whether
// this caller joined a call another caller started.
func (g *Group[V]) Do(ctx context.Context, key string, fn func() (V, error)) (v V, err error, shared bool) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = make(map[string]*call[V])
	}
	c, shared := g.calls[key]
	if shared {
		c.waiters++
		g.joined.Add(1)
	} else {
		c = &call[V]{done: make(chan struct{})}
		g.calls[key] = c
		go g.run(key, c, fn)
	}
	g.mu.Unlock()
	select {
	case <-c.done:
		return c.val, c.err, shared
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err(), shared
	}
}

// Waiting is the number of callers that joined key's call in flight.
func (g *Group[V]) Waiting(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		return c.waiters
	}
	return 0
}

// Joined is how many callers have joined another's call since the Group was made.
func (g *Group[V]) Joined() int64 { return g.joined.Load() }

// InFlight is the number of keys with work under way.
func (g *Group[V]) InFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.calls)
}

func (g *Group[V]) run(key string, c *call[V], fn func() (V, error)) {
	defer func() {
		// A panic in fn must not take the process down, nor leave waiters hanging.
		if p := recover(); p != nil {
			c.err = fmt.Errorf("internal error: %v", p)
		}
		g.mu.Lock()
		delete(g.calls, key)
		g.mu.Unlock()
		close(c.done)
	}()
	c.val, c.err = fn()
}
