package upstream

// The concurrency bound. Every miss on a distinct name is one upstream request, and without
// a bound a burst of them against a slow upstream holds one connection, its goroutines and
// its descriptors per miss for as long as upstream takes: 1,500 misses, 1,500 connections.
// Each Registry therefore lets at most MaxConcurrent exchanges be open at once. A slot is
// taken in send, before the first byte goes out, and held until the answer's body is read
// to its end or closed, across redirect hops; token requests and the /v2/ ping take one
// too. No code path asks for a second slot while holding one (authorization happens before
// send, and a HEAD that falls back to GET closes its answer first), so a full bound can
// delay but never deadlock.
//
// A blob stream (OpenBlob) holds its slot only until its answer headers are in: waiting
// for upstream is what the bound is for, while a layer download may last minutes, is cut
// by the idle-progress rule when it stalls, and has a client connection of its own (which
// the server limits bound). Holding slots for whole downloads would let a few slow
// downloads lock every metadata miss out.
//
// A request that finds every slot taken waits at most maxSlotWait, and at most a quarter
// of the upstream timeout (the wait counts against the operation's timeout, and most of it
// must be left for upstream's answer), then fails with a Busy *Error (KindUnavailable: the
// cache serves stale, the proxy answers 503 with Retry-After), counted in TurnedAway. Hits
// never get here.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// DefaultMaxConcurrent is the bound when Options.MaxConcurrent is 0. The transport keeps
// 64 idle connections per host, so at the bound every request can reuse one instead of
// dialling; 64 slots at a registry's usual 100-300 ms answer 200-600 misses a second,
// far beyond what update checkers ask, while a slow upstream (20 s an answer) is not
// served faster by more connections, only held by them.
const DefaultMaxConcurrent = 64

// maxSlotWait bounds a request's wait for a slot. At the default bound and a healthy
// upstream, 5 s clears a burst of some 1,000 distinct misses; when upstream is slow,
// waiting longer only ties clients up, and a 503 with Retry-After tells them when to come
// back (a stale entry is served instead where there is one).
const maxSlotWait = 5 * time.Second

// slots is the per-Registry bound.
type slots struct {
	ch   chan struct{}
	wait time.Duration
	// turnedAway counts the requests that waited out s.wait without a slot.
	turnedAway atomic.Int64
}

func newSlots(max int, timeout time.Duration) slots {
	if max <= 0 {
		max = DefaultMaxConcurrent
	}
	return slots{ch: make(chan struct{}, max), wait: min(maxSlotWait, timeout/4)}
}

// acquire takes a slot, waiting at most s.wait. A wait whose time is up is the bound's
// doing: Busy, and counted. One cut short by the caller's context (the client went away,
// or the operation's deadline came first) is the caller's: it fails with the context's
// error, as the exchange would have, and is neither Busy nor counted.
func (r *Registry) acquire(ctx context.Context) error {
	select {
	case r.slots.ch <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(r.slots.wait)
	defer t.Stop()
	select {
	case r.slots.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return r.unavailable(ctx.Err(), "waiting for a free upstream connection")
	case <-t.C:
	}
	r.slots.turnedAway.Add(1)
	return &Error{Kind: KindUnavailable, Upstream: r.name, Busy: true, RetryAfter: r.slots.wait,
		Message: fmt.Sprintf("all %d upstream connections stayed busy (upstreams[].max_concurrent)", cap(r.slots.ch))}
}

// TurnedAway counts the requests the bound turned away since start: every slot stayed
// busy for as long as they could wait (regcache_upstream_busy_total).
func (r *Registry) TurnedAway() int64 { return r.slots.turnedAway.Load() }

func (r *Registry) release() { <-r.slots.ch }

// slotBody gives the slot back when the body is read to its end (or fails) or is closed,
// whichever comes first.
type slotBody struct {
	io.ReadCloser
	r    *Registry
	done atomic.Bool
}

func (b *slotBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.free()
	}
	return n, err
}

func (b *slotBody) Close() error {
	err := b.ReadCloser.Close()
	b.free()
	return err
}

func (b *slotBody) free() {
	if b.done.CompareAndSwap(false, true) {
		b.r.release()
	}
}

// holdSlot makes resp's body give the slot back.
func (r *Registry) holdSlot(resp *http.Response) {
	resp.Body = &slotBody{ReadCloser: resp.Body, r: r}
}

// streamOutsideBound gives resp's slot back now that its headers are in: for blob streams,
// whose bodies are not held to the bound (see above).
func streamOutsideBound(resp *http.Response) {
	if b, ok := resp.Body.(*slotBody); ok {
		b.free()
		resp.Body = b.ReadCloser
	}
}
