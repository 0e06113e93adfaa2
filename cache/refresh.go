package cache

// Refresh-ahead: a tag asked during its TTL window is revalidated before it expires, in the
// background, so that a tag in steady use is always a hit and no client waits on a
// revalidation. Each tag entry taken into memory (from upstream, or another replica's from
// the fleet tier) gets a refresh point when it is stored: a random point in the last
// 10–20% of its TTL, earlier by a random multiple of how long its fetch took (as XFetch
// does: a slow upstream is asked sooner), never in its first half and never after it
// expires. Randomized, the replicas of a fleet do not refresh in step; the first to reach
// its point refreshes through the normal miss road, under the fleet lock, and the others
// find its answer in the fleet tier, which costs upstream nothing. Hit marks the entry
// asked (one atomic load; one store, the first time); at the refresh point an entry that
// was asked, and is still the one memory holds, is revalidated with one HEAD, which takes
// the upstream's budget: refused, the entry is left to expire and clients revalidate it on
// demand. An entry nobody asked is not refreshed. The refreshed entry starts a new window,
// not asked yet.

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/zap"

	"regcache/internal/budget"
	"regcache/internal/due"
	"regcache/upstream"
)

// Refresh-ahead's bounds.
const (
	// refreshLeadMin and refreshLeadMax are the part of a TTL, at its end, in which the
	// refresh point falls; a slow fetch moves it earlier, down to maxRefreshLead.
	refreshLeadMin, refreshLeadMax, maxRefreshLead = 0.10, 0.20, 0.50
	// maxRefreshQueue bounds the entries waiting for their refresh point (about a hundred
	// bytes each): past it, entries are stored without one, and expire as before.
	maxRefreshQueue = 100_000
	// refreshWorkers bounds the refreshes under way at once.
	refreshWorkers = 8
)

// refreshPoint is when an entry fetched at fetched, whose fetch took took, is refreshed.
func refreshPoint(ttl time.Duration, fetched time.Time, took time.Duration) time.Time {
	lead := time.Duration(float64(ttl) * (refreshLeadMin + (refreshLeadMax-refreshLeadMin)*rand.Float64()))
	if took > 0 {
		// XFetch's δ·β·(−ln U), β = 1: a multiple of the fetch's time, exponentially spread.
		lead += time.Duration(float64(took) * -math.Log(1-rand.Float64()))
	}
	return fetched.Add(ttl - min(lead, time.Duration(float64(ttl)*maxRefreshLead)))
}

// refreshItem is an entry waiting for its refresh point.
type refreshItem struct {
	entry *TagEntry
	o     *Origin
	// key is the entry's memory key; repo and tag are the cache's own copies.
	key, repo, tag string
}

// refresher is the schedule: one goroutine, waking at the earliest refresh point.
type refresher struct {
	queue *due.Queue[*refreshItem]
	// ctx ends at Close, for the refreshes under way.
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *Cache) startRefreshes() {
	c.refreshes.queue = due.New[*refreshItem]()
	c.refreshes.ctx, c.refreshes.cancel = context.WithCancel(context.Background())
	c.bg.Add(1)
	go c.runRefreshes()
}

// scheduleRefresh gives an entry just stored under key its refresh point; took is how
// long upstream took to answer (0 for an entry from the fleet tier). Called by the store
// and fleet steps of a tag's lookup, the places where an entry is taken into memory.
func (c *Cache) scheduleRefresh(o *Origin, key, repo, tag string, e *TagEntry, took time.Duration) {
	ttl := e.TTL // its tag's, decided when it was stored
	if ttl <= 0 {
		return
	}
	at, now := refreshPoint(ttl, e.FetchedAt, took), time.Now()
	if expires := e.FetchedAt.Add(ttl); at.Before(now) {
		// Another replica's entry, taken late in its window: give clients half of what is
		// left to ask it.
		if !expires.After(now) {
			return
		}
		at = now.Add(expires.Sub(now) / 2)
	}
	if q := c.refreshes.queue; q.Len() < maxRefreshQueue {
		q.Push(at, &refreshItem{entry: e, o: o, key: key, repo: repo, tag: tag})
	}
}

// runRefreshes hands each entry due for its refresh to a worker, until Close; then it
// waits for the refreshes under way.
func (c *Cache) runRefreshes() {
	defer c.bg.Done()
	rf := &c.refreshes
	var workers sync.WaitGroup
	defer func() { rf.cancel(); workers.Wait() }()
	sem := make(chan struct{}, refreshWorkers)
	for {
		next, ok := rf.queue.Next(c.stop)
		if !ok {
			return
		}
		if !c.refreshDue(next) {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-c.stop:
			return
		}
		workers.Go(func() {
			defer func() { <-sem }()
			c.refresh(rf.ctx, next)
		})
	}
}

// refreshDue reports whether it is to be refreshed now: asked in its window, still the
// entry memory holds, not expired, and its upstream's budget not known to be spent.
func (c *Cache) refreshDue(it *refreshItem) bool {
	e := it.entry
	if !e.asked.Load() || c.store.tag(it.key) != e || time.Since(e.FetchedAt) >= e.TTL {
		return false
	}
	if b := it.o.Budget; b != nil && !b.HeldUntil(false).IsZero() {
		return false // spent: it expires, and clients revalidate it on demand
	}
	return true
}

// refresh revalidates the item's tag with a background HEAD over the miss road: coalesced with
// any other background lookup of the tag here, and through the fleet lock with the other
// replicas; a newer entry already in memory or the fleet tier answers it at no cost. When
// the tag moved and its body was held (clients GET it), the store step fetches the new
// body too (movedBody).
func (c *Cache) refresh(ctx context.Context, it *refreshItem) {
	r := Request{Origin: it.o, Repo: it.repo, Ref: it.tag, Now: time.Now(), Background: budget.Refresh, after: it.entry.FetchedAt}
	if _, err := c.resolveTag(ctx, r); err != nil {
		if ctx.Err() == nil {
			c.log.Debug("refresh-ahead: not refreshed; clients revalidate on demand",
				zap.String("upstream", it.o.Registry.Name()), zap.String("repository", it.repo), zap.String("tag", it.tag), zap.Error(err))
		}
	}
}

// movedBody is, for background work whose HEAD found the tag moved from was to d, the new
// manifest with its body when the old body is held (clients GET the tag): fetched before
// the move is stored, so that clients go on with the old answer until the new one is
// whole, and their next GET is a hit. It takes the budget's share for GETs; nil when not
// wanted, refused or failed (clients then fetch it themselves).
func (l *tagLookup) movedBody(was, d upstream.Descriptor) *ManifestEntry {
	c := l.c
	if l.r.Background == budget.Client || was.Digest == "" || was.Digest == d.Digest || c.cachedBody(l.up, l.r.Repo, was.Digest) == nil {
		return nil
	}
	if e := c.cachedBody(l.up, l.r.Repo, d.Digest); e != nil {
		return e
	}
	e, err := c.manifestByDigest(context.Background(), l.r.Origin, l.r.Repo, d.Digest, true, l.r.Background)
	if err != nil {
		c.log.Debug("background: the new body of a moved tag not fetched; clients fetch it", zap.String("upstream", l.up),
			zap.String("repository", l.r.Repo), zap.String("tag", l.r.Ref), zap.Error(err))
		return nil
	}
	return e
}

// spend takes o's budget for a background request of reason (pull: a manifest GET), for
// the fetch step of a lookup, which is where a request really goes upstream: an answer
// found in memory or the fleet tier spends nothing. A client's request (reason Client)
// takes nothing. done is called when the request has ended, with what it returned: a
// request the breaker, the rate-limit guard or the concurrency bound refused before it
// was sent gives its leave back.
func spend(o *Origin, reason budget.Reason, pull bool) (done func(error), err error) {
	if reason == budget.Client || o.Budget == nil {
		return func(error) {}, nil
	}
	t, err := o.Budget.Grant(reason, pull)
	if err != nil {
		return nil, err
	}
	return func(err error) {
		if err != nil && upstream.NotSent(err) {
			t.Cancel()
			return
		}
		t.Done()
	}, nil
}
