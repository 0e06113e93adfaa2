package upstream

// The breaker. A registry that is down costs each request the wait for its failure (a
// refused connection is quick, a black-holed one takes connect_timeout, a hung one the
// whole timeout), and asking it at every client's pace only adds to its trouble. Each
// Registry therefore counts the operations that fail in a row, whatever they asked for:
// after Options.FailuresToOpen of them the breaker opens, and operations are refused before
// anything leaves (no token, no ping, no request) with an Error of KindUnavailable whose
// BreakerOpen is set, which the cache serves around with stale answers and the proxy
// answers 503 UNAVAILABLE with Retry-After. Once its backoff has passed, the first
// operation to come is let through as the probe, alone (the others are refused while it is
// out): a success closes the breaker, a failure doubles the backoff. The backoff starts at
// Options.ErrorBackoff and doubles up to Options.BackoffCap (the upstream's tag TTL, and
// never above MaxErrorBackoff), and is never shorter than the Retry-After of the failure
// that set it (a 503's).
//
// The breaker lives here rather than in the cache because this layer sees every operation
// of an upstream (manifests by tag and by digest, tags pages, blobs, watches) and nothing
// else; the cache's own backoff is per tag (cache/backoff.go).
//
// What counts, once per operation (HeadManifest, GetManifest, Tags, OpenBlob), whatever
// redirects, token requests and retries it took:
//   - a failure: no answer (refused, reset, timed out), a 5xx answer, a failing or
//     refusing token endpoint, a body cut short: KindUnavailable;
//   - a success: any other answer, a 404 or an invalid body included (upstream is up);
//   - neither: a 429, which is the rate-limit guard's to act on (ratelimit.go: it holds
//     back exactly what the limit covers, while Docker Hub's free HEADs go on, which an
//     open breaker would refuse too), and an operation that was never sent (held back by
//     the guard, turned away by the concurrency bound, refused by the breaker) or that its
//     caller gave up on.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultFailuresToOpen is upstreams[].failures_to_open's default: consecutive failed
// operations that open the breaker.
const DefaultFailuresToOpen = 5

// MaxErrorBackoff bounds every backoff while upstream fails, the breaker's and the cache's per
// tag, whatever the tag TTL: a registry that comes back is asked again within it.
const MaxErrorBackoff = 5 * time.Minute

// BreakerState is what the breaker knows, for metrics and /readyz.
type BreakerState struct {
	// Open is set while operations are refused without asking upstream.
	Open bool
	// Failures counts the operations that failed in a row.
	Failures int
	// Backoff is the current wait between probes (0 while closed); NextProbe is when the
	// next operation may go as the probe, OpenSince when the breaker opened.
	Backoff              time.Duration
	NextProbe, OpenSince time.Time
}

// breaker is the per-Registry state. The zero value is off.
type breaker struct {
	threshold int
	base, max time.Duration

	mu        sync.Mutex
	failures  int
	open      bool
	probing   bool // the probe is out
	backoff   time.Duration
	probeAt   time.Time
	openSince time.Time
}

func newBreaker(threshold int, base, limit time.Duration) *breaker {
	return &breaker{threshold: threshold, base: max(base, 0), max: min(max(limit, 0), MaxErrorBackoff)}
}

// outcome is what an operation tells the breaker.
type outcome uint8

const (
	neither outcome = iota
	succeeded
	failed
)

// outcomeOf judges an operation's error (see the top of this file); retryAfter is what
// a failing upstream asked for.
func outcomeOf(ctx context.Context, err error) (o outcome, retryAfter time.Duration) {
	if err == nil {
		return succeeded, 0
	}
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return neither, 0 // the caller went away
	}
	var e *Error
	if !errors.As(err, &e) {
		return neither, 0
	}
	switch {
	case NotSent(err), e.Kind == KindRateLimited:
		return neither, 0
	case e.Kind == KindUnavailable:
		return failed, min(e.RetryAfter, maxRateLimitHold) // a 503's, bounded as the guard bounds a 429's
	}
	return succeeded, 0
}

// enter lets an operation through, as the probe when the breaker is open and its backoff
// has passed, or refuses it.
func (r *Registry) enter() (probe bool, err error) {
	b := r.brk
	if b == nil {
		return false, nil
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return false, nil
	}
	if !b.probing && !now.Before(b.probeAt) {
		b.probing = true
		return true, nil
	}
	// While the probe is out, clients are told to come back in a second: it decides.
	wait := max(b.probeAt.Sub(now), time.Second)
	return false, &Error{Kind: KindUnavailable, Upstream: r.name, BreakerOpen: true, RetryAfter: wait,
		Message: fmt.Sprintf("not asked: %d operations failed in a row (upstreams[].failures_to_open); next probe in %s",
			b.failures, wait.Round(time.Millisecond))}
}

// leave records an operation's outcome, for the breaker and Failures.
func (r *Registry) leave(ctx context.Context, probe bool, err error) {
	r.note(ctx, err)
	b := r.brk
	if b == nil {
		return
	}
	o, retryAfter := outcomeOf(ctx, err)
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
	switch o {
	case succeeded:
		b.failures, b.open, b.backoff = 0, false, 0
	case failed:
		b.failures++
		switch {
		case b.open && probe:
			b.backoff = max(min(b.backoff*2, b.max), retryAfter)
			b.probeAt = now.Add(b.backoff)
		case !b.open && b.threshold > 0 && b.failures >= b.threshold:
			b.open, b.openSince = true, now
			b.backoff = max(min(b.base, b.max), retryAfter)
			b.probeAt = now.Add(b.backoff)
		}
	}
}

// Breaker reports the breaker's state (closed and empty when it is off).
func (r *Registry) Breaker() BreakerState {
	b := r.brk
	if b == nil {
		return BreakerState{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := BreakerState{Open: b.open, Failures: b.failures}
	if b.open {
		s.Backoff, s.NextProbe, s.OpenSince = b.backoff, b.probeAt, b.openSince
	}
	return s
}
