package cache

// Backoff while upstream fails. A stale tag (or tags listing) whose revalidation failed in
// a way a stale answer covers is served stale, without asking upstream again, until its
// backoff has passed: cache.error_backoff after the first failure, doubling with each
// failure in a row up to the tag's TTL (and never above upstream.MaxErrorBackoff), and
// never shorter than the Retry-After the failure carried. So a cached tag costs a failing
// upstream at most one request per backoff, whatever the clients' pace. A request that was
// never sent (held back by the rate-limit guard, turned away by the concurrency bound or
// refused by the upstream's open breaker) doubles nothing: the tag waits for as long as it
// was told to.
//
// The state lives in the entry it is about (TagEntry, tagList), so that it is bounded by
// the cache and goes with the entry, and a success resets it by storing a new entry. A
// fresh hit never looks at it. Each replica keeps its own: a fleet's replicas share
// answers, not failures.

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"regcache/upstream"
)

// backoff is a run of failures of one cached answer: how many, until when upstream is not
// asked for it, and the last failure. A backoff is never changed once stored; a failure
// stores a new one.
type backoff struct {
	failures int
	until    time.Time
	err      error
}

// retry is where an entry keeps its backoff.
type retry struct{ p atomic.Pointer[backoff] }

// holding is the backoff in force at now, or nil when upstream may be asked.
func (r *retry) holding(now time.Time) *backoff {
	if b := r.p.Load(); b != nil && now.Before(b.until) {
		return b
	}
	return nil
}

// fail records err, a failure serveStaleOn covers, at now and returns the backoff it
// sets. base is cache.error_backoff; ttl is the answer's freshness, which caps it.
func (r *retry) fail(err error, now time.Time, base, ttl time.Duration) *backoff {
	wait := upstream.RetryAfter(err)
	sent := !upstream.NotSent(err)
	for {
		old := r.p.Load()
		next := &backoff{err: err}
		if old != nil {
			next.failures, next.until = old.failures, old.until
		}
		if sent {
			next.failures++
			wait = max(wait, backoffStep(base, next.failures, ttl))
		}
		if until := now.Add(wait); until.After(next.until) {
			next.until = until
		}
		if r.p.CompareAndSwap(old, next) {
			return next
		}
	}
}

// backoffStep is the backoff after n failures in a row: base doubled n-1 times, capped at
// ttl and upstream.MaxErrorBackoff.
func backoffStep(base time.Duration, n int, ttl time.Duration) time.Duration {
	limit := max(min(ttl, upstream.MaxErrorBackoff), 0)
	d := max(base, 0)
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// logBackoff tells that a cached answer is held back from upstream after a failure.
func (c *Cache) logBackoff(up, repo, ref string, b *backoff, err error) {
	c.log.Info("upstream failed; serving stale without asking it again until the backoff passes",
		zap.String("upstream", up), zap.String("repository", repo), zap.String("reference", ref),
		zap.Int("failures", b.failures), zap.Time("until", b.until), zap.Error(err))
}

// backoffTTL is the freshness a backoff is capped at: tag's TTL on o, or for a tags
// listing (tag "") the upstream's.
func backoffTTL(o *Origin, tag string) time.Duration {
	if tag == "" {
		return o.TagTTL // a tags listing
	}
	return o.TTLFor(tag)
}

// StaleBackoff counts the stale answers served without asking o because a backoff was in
// force (regcache_stale_backoff_total).
func (o *Origin) StaleBackoff() int64 { return o.backoffServed.Load() }
