// Package watch keeps named tags revalidated when no client asks. Each watched tag is
// looked up through the cache once per tag TTL: when it has gone stale that costs one HEAD,
// as a client HEAD would, and in a fleet the Redis tier's lock and shared entries make it
// one HEAD for the whole fleet. A move upstream then reaches the change feed (the cache
// reports it) with no client asking. A watched repository's tag list is read each TTL too:
// matching tags that appear or go are tag.created and tag.deleted events, and each
// matching tag is watched. Watches are background work: what they ask upstream takes the
// upstream's budget (internal/budget), and a look the budget refuses waits until it
// allows.
package watch

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"regexp"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"regcache/cache"
	"regcache/internal/budget"
	"regcache/internal/due"
	"regcache/internal/feed"
	"regcache/upstream"
)

// Tag is one watched tag.
type Tag struct {
	// Upstream is the upstream's name, as events write it.
	Upstream        string
	Origin          *cache.Origin
	Repository, Tag string
}

// Repo is a watched repository: its tags that match Tags are watched, and appear in
// the feed when they are created or deleted.
type Repo struct {
	Upstream   string
	Origin     *cache.Origin
	Repository string
	Tags       *regexp.Regexp
}

// Options configure a Watcher.
type Options struct {
	Cache *cache.Cache
	Tags  []Tag
	Repos []Repo
	// Publish records tag.created and tag.deleted events (tag.changed comes from the
	// cache itself, whoever asked).
	Publish func(feed.Event)
	Logger  *zap.Logger
	// Concurrency bounds the lookups in flight at once; 0 means defaultConcurrency.
	Concurrency int
}

// Timings of the watcher.
const (
	defaultConcurrency = 8
	// minInterval is the shortest a watch waits between two looks at one thing.
	minInterval = 100 * time.Millisecond
	// retryFirst is the wait after a first failed look; it doubles with each failure in a
	// row, up to the TTL. A look that upstream answers "no such tag" or "denied" waits a
	// whole TTL: asking sooner would not change the answer.
	retryFirst = 5 * time.Second
	// maxSpread is the most a look is put off past its due time (and at most a tenth of
	// the TTL), so that the replicas of a fleet do not all queue on the fleet lock at the
	// same instant.
	maxSpread = 250 * time.Millisecond
	// maxPages bounds the tags pages one listing reads (at 10,000 tags a page).
	maxPages = 100
)

// Watcher runs the watches until Close.
type Watcher struct {
	opts Options
	log  *zap.Logger
	// stop ends the scheduling of looks; ctx, cancelled when Close gives up waiting, the
	// looks in flight.
	stop   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	queue  *due.Queue[*item] // the looks, by when each is due

	mu    sync.Mutex
	tags  map[string]*tagWatch // by upstream/repository:tag
	stats map[string]*counters // by upstream
}

// tagWatch is a watched tag and what it was last seen pointing to.
type tagWatch struct {
	Tag
	byImage bool        // named by an image watch, not only by a repository's listing
	repos   int         // repository watches whose listings hold it
	gone    bool        // no longer watched: dropped when next due
	last    digestState // where it pointed at the last look
	fails   int         // looks failed in a row
}

type digestState struct{ digest, mediaType string }

// repoWatch is a watched repository and the matching tags its last listing held (nil
// before the first: the first look records, it reports nothing).
type repoWatch struct {
	Repo
	known map[string]bool
	fails int
}

type counters struct {
	revalidations, listings, errors, waits uint64
}

// Start begins every watch at once (the first look records where each tag points).
func Start(opts Options) *Watcher {
	if opts.Concurrency <= 0 {
		opts.Concurrency = defaultConcurrency
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	w := &Watcher{opts: opts, log: log, stop: make(chan struct{}), queue: due.New[*item](),
		tags: map[string]*tagWatch{}, stats: map[string]*counters{}}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	now := time.Now()
	for _, t := range opts.Tags {
		w.counters(t.Upstream)
		w.addTag(t, true, now)
	}
	for _, r := range opts.Repos {
		w.counters(r.Upstream)
		w.queue.Push(now, &item{repo: &repoWatch{Repo: r}})
	}
	w.wg.Add(1)
	go w.run()
	return w
}

// Close stops the watches and waits for the looks in flight (the cache is closed after
// them) until ctx ends; then it stops waiting for them too.
func (w *Watcher) Close(ctx context.Context) {
	close(w.stop)
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.cancel()
		<-done
	}
	w.cancel()
}

// counters is up's counters; w.mu held or the watcher not started.
func (w *Watcher) counters(up string) *counters {
	c := w.stats[up]
	if c == nil {
		c = &counters{}
		w.stats[up] = c
	}
	return c
}

// addTag watches t from at, or counts one more watch naming it; w.mu held or the watcher
// not started. It returns the tag's watch.
func (w *Watcher) addTag(t Tag, byImage bool, at time.Time) *tagWatch {
	key := t.Upstream + "/" + t.Repository + ":" + t.Tag
	if tw := w.tags[key]; tw != nil {
		tw.byImage = tw.byImage || byImage
		if !byImage {
			tw.repos++
		}
		return tw
	}
	tw := &tagWatch{Tag: t, byImage: byImage}
	if !byImage {
		tw.repos = 1
	}
	w.tags[key] = tw
	w.queue.Push(at, &item{tag: tw})
	return tw
}

// run hands each look to a worker when it is due, at most Concurrency at once.
func (w *Watcher) run() {
	defer w.wg.Done()
	sem := make(chan struct{}, w.opts.Concurrency)
	for {
		next, ok := w.queue.Next(w.stop)
		if !ok {
			return
		}
		if until := held(next.origin(), next.repo != nil, time.Now()); !until.IsZero() {
			// Put off here, not in a worker: with a budget spent, every look due waits, and
			// they may be many.
			w.count(next.upstream(), func(c *counters) { c.waits++ })
			w.queue.Push(until.Add(rand.N(spread(next.ttl()))), next)
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-w.stop:
			return
		}
		w.wg.Add(1)
		go func() {
			defer func() { <-sem; w.wg.Done() }()
			var at time.Time
			if next.tag != nil {
				at = w.lookTag(next.tag)
			} else {
				at = w.list(next.repo)
			}
			if at.IsZero() || w.stopped() {
				return // no longer watched, or stopping
			}
			w.queue.Push(at.Add(rand.N(spread(next.ttl()))), next)
		}()
	}
}

func (w *Watcher) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// spread is how much a look may be put off past its due time.
func spread(ttl time.Duration) time.Duration { return max(min(maxSpread, ttl/10), 1) }

// held is until when upstream asked not to be asked (a 429's hold, or a rate limit it
// says is spent), or the upstream's budget for background work is spent, for a tag look
// or (listing) a tags listing: watches are background work and never spend what clients
// may need.
func held(o *cache.Origin, listing bool, now time.Time) time.Time {
	rl := o.Registry.RateLimit()
	until := rl.AllBlockedUntil
	if o.Budget != nil {
		until = later(until, o.Budget.HeldUntil(false))
	}
	if listing && rl.TagsBlockedUntil.After(until) {
		until = rl.TagsBlockedUntil
	}
	if rl.Known && rl.Remaining == 0 {
		// Remaining is only learnt from answers: look again after a guard hold's time.
		if t := rl.Updated.Add(upstream.DefaultRateLimitHold); t.After(until) {
			until = t
		}
	}
	if until.After(now) {
		return until
	}
	return time.Time{}
}

// errStale is a look the cache answered with what it held because upstream failed.
var errStale = errors.New("upstream failed; the cache answered with what it held")

// lookTag looks the tag up through the cache (upstream is asked only when what is held
// went stale) and says when to look next; zero when the tag is no longer watched.
func (w *Watcher) lookTag(tw *tagWatch) time.Time {
	o := tw.Origin
	now := time.Now()
	w.mu.Lock()
	gone := tw.gone
	w.mu.Unlock()
	if gone {
		return time.Time{}
	}
	if until := held(o, false, now); !until.IsZero() {
		w.count(tw.Upstream, func(c *counters) { c.waits++ })
		return until
	}
	a, err := w.look(o, tw.Repository, tw.Tag.Tag)
	var spent *budget.Spent
	if errors.As(err, &spent) {
		w.count(tw.Upstream, func(c *counters) { c.waits++ })
		return now.Add(spent.RetryAfter)
	}
	w.count(tw.Upstream, func(c *counters) {
		if a.Status != cache.Hit {
			c.revalidations++
		}
		if err != nil {
			c.errors++
		}
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		tw.fails++
		if tw.fails == 1 && !w.stopped() {
			w.log.Warn("watch: look failed; retrying with backoff", zap.String("upstream", tw.Upstream),
				zap.String("repository", tw.Repository), zap.String("tag", tw.Tag.Tag), zap.Error(err))
		}
		return now.Add(backoff(o.TTLFor(tw.Tag.Tag), tw.fails, err))
	}
	if tw.fails > 0 {
		w.log.Info("watch: looks succeed again", zap.String("upstream", tw.Upstream),
			zap.String("repository", tw.Repository), zap.String("tag", tw.Tag.Tag), zap.Int("failed", tw.fails))
		tw.fails = 0
	}
	tw.last = digestState{digest: string(a.Digest), mediaType: a.MediaType}
	return nextLook(o.TTLFor(tw.Tag.Tag), a.FetchedAt, now)
}

// look asks the cache where a tag points, as background work; a stale answer (upstream
// failed) is a failure.
func (w *Watcher) look(o *cache.Origin, repo, tag string) (cache.Answer, error) {
	a, err := w.opts.Cache.Load(w.ctx, cache.Request{Origin: o, Repo: repo, Ref: tag, Now: time.Now(), Background: budget.Watch})
	if err == nil && a.Status == cache.Stale {
		err = errStale
	}
	return a, err
}

// nextLook is when an answer fetched at fetched goes stale.
func nextLook(ttl time.Duration, fetched, now time.Time) time.Time {
	return later(fetched.Add(ttl), now.Add(minInterval))
}

// backoff is how long the fails-th failed look in a row waits: retryFirst doubling, up to
// the TTL, or the TTL at once when upstream said the tag is not there or not ours.
func backoff(ttl time.Duration, fails int, err error) time.Duration {
	ttl = max(ttl, minInterval)
	if k := upstream.KindOf(err); k == upstream.KindNotFound || k == upstream.KindDenied {
		return ttl
	}
	d := retryFirst << min(fails-1, 16)
	return max(min(d, ttl), minInterval)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (w *Watcher) count(up string, f func(*counters)) {
	w.mu.Lock()
	f(w.counters(up))
	w.mu.Unlock()
}

// list reads the repository's tags through the cache and reports what appeared and went
// among the matching ones.
func (w *Watcher) list(rw *repoWatch) time.Time {
	o := rw.Origin
	now := time.Now()
	if until := held(o, true, now); !until.IsZero() {
		w.count(rw.Upstream, func(c *counters) { c.waits++ })
		return until
	}
	tags, fetched, truncated, err := w.listing(rw, now)
	var spent *budget.Spent
	if errors.As(err, &spent) {
		w.count(rw.Upstream, func(c *counters) { c.waits++ })
		return now.Add(spent.RetryAfter)
	}
	w.count(rw.Upstream, func(c *counters) {
		c.listings++
		if err != nil {
			c.errors++
		}
	})
	if err != nil {
		rw.fails++
		if rw.fails == 1 && !w.stopped() {
			w.log.Warn("watch: tags listing failed; retrying with backoff", zap.String("upstream", rw.Upstream),
				zap.String("repository", rw.Repository), zap.Error(err))
		}
		return now.Add(backoff(o.TagTTL, rw.fails, err))
	}
	rw.fails = 0
	matching := map[string]bool{}
	for _, t := range tags {
		if rw.Tags.MatchString(t) {
			matching[t] = true
		}
	}
	first := rw.known == nil
	var created, deleted []string
	for t := range matching {
		if first || !rw.known[t] {
			created = append(created, t)
		}
	}
	for t := range rw.known {
		// A listing cut at its bound (tags_max_count, tags_max_bytes) lacks its last tags:
		// their absence says nothing.
		if !matching[t] && !truncated {
			deleted = append(deleted, t)
		}
	}
	sort.Strings(created)
	sort.Strings(deleted)
	if rw.known == nil {
		rw.known = map[string]bool{}
	}
	for _, t := range created {
		tag := Tag{Upstream: rw.Upstream, Origin: o, Repository: rw.Repository, Tag: t}
		if first {
			w.mu.Lock()
			w.addTag(tag, false, now)
			w.mu.Unlock()
			rw.known[t] = true
			continue
		}
		// A new tag: where it points is part of the event. A tag whose look fails (or waits
		// on the rate limit) is not taken as known, so the next listing tries again.
		if !held(o, false, time.Now()).IsZero() {
			w.count(rw.Upstream, func(c *counters) { c.waits++ })
			continue
		}
		a, err := w.look(o, rw.Repository, t)
		if err != nil {
			w.count(rw.Upstream, func(c *counters) {
				if errors.Is(err, budget.ErrSpent) {
					c.waits++
				} else {
					c.errors++
				}
			})
			continue
		}
		rw.known[t] = true
		w.mu.Lock()
		tw := w.addTag(tag, false, nextLook(o.TTLFor(t), a.FetchedAt, now))
		tw.last = digestState{digest: string(a.Digest), mediaType: a.MediaType}
		w.mu.Unlock()
		w.publish(feed.TagCreated, tag, tw.last)
	}
	for _, t := range deleted {
		delete(rw.known, t)
		key := rw.Upstream + "/" + rw.Repository + ":" + t
		w.mu.Lock()
		tw := w.tags[key]
		var last digestState
		if tw != nil {
			last = tw.last
			tw.repos--
			if tw.repos <= 0 && !tw.byImage {
				tw.gone = true
				delete(w.tags, key)
			}
		}
		w.mu.Unlock()
		w.publish(feed.TagDeleted, Tag{Upstream: rw.Upstream, Origin: o, Repository: rw.Repository, Tag: t}, last)
	}
	return nextLook(o.TagTTL, fetched, now)
}

// listing reads a repository's whole listing, page by page, as a client following Links
// would; fetched is when the listing was fetched upstream.
func (w *Watcher) listing(rw *repoWatch, now time.Time) (tags []string, fetched time.Time, truncated bool, err error) {
	req := cache.TagsRequest{N: cache.MaxTagsPage, Background: budget.Watch}
	for range maxPages {
		a, st, err := w.opts.Cache.Tags(w.ctx, rw.Origin, rw.Repository, req, now)
		if err == nil && st == cache.Stale {
			err = errStale
		}
		if err != nil {
			return nil, time.Time{}, false, err
		}
		var page struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(a.Body, &page); err != nil {
			return nil, time.Time{}, false, err
		}
		tags = append(tags, page.Tags...)
		if fetched.IsZero() {
			fetched = a.FetchedAt
		}
		truncated = truncated || a.TruncatedBy != ""
		if !a.More {
			return tags, fetched, truncated, nil
		}
		req.Last = a.NextLast
	}
	return tags, fetched, true, nil // more pages than one listing reads: cut here
}

// publish records a created or deleted tag; a deleted tag's digest is where it pointed
// at the last look (none when it was never looked at).
func (w *Watcher) publish(typ string, t Tag, last digestState) {
	if w.opts.Publish == nil {
		return
	}
	w.opts.Publish(feed.Event{
		Type:       typ,
		Time:       time.Now().UTC().Format(time.RFC3339),
		Image:      t.Upstream + "/" + t.Repository + ":" + t.Tag,
		Registry:   t.Upstream,
		Repository: t.Repository,
		Tag:        t.Tag,
		Digest:     last.digest,
		MediaType:  last.mediaType,
	})
}

// Stats is one upstream's watches, for the metrics.
type Stats struct {
	Upstream string
	// Tags is how many tags are watched. Revalidations counts looks that found the tag
	// stale (answered by upstream, by another replica's fresh answer through Redis, or not
	// at all: a failure); Listings, tag listings read; Errors, looks and listings that
	// failed (a stale answer served because upstream failed is one); Waits, looks put off
	// because upstream's rate limit was spent or held, or its budget was spent.
	Tags                                   int
	Revalidations, Listings, Errors, Waits uint64
}

// Stats reads the counters of every upstream with a watch, by name.
func (w *Watcher) Stats() []Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	tags := map[string]int{}
	for _, tw := range w.tags {
		tags[tw.Upstream]++
	}
	out := make([]Stats, 0, len(w.stats))
	for up, c := range w.stats {
		out = append(out, Stats{Upstream: up, Tags: tags[up], Revalidations: c.revalidations,
			Listings: c.listings, Errors: c.errors, Waits: c.waits})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Upstream < out[j].Upstream })
	return out
}

// item is one look in the schedule: a tag's or a repository listing's.
type item struct {
	tag  *tagWatch
	repo *repoWatch
}

func (it *item) upstream() string {
	if it.tag != nil {
		return it.tag.Upstream
	}
	return it.repo.Upstream
}

func (it *item) origin() *cache.Origin {
	if it.tag != nil {
		return it.tag.Origin
	}
	return it.repo.Origin
}

// ttl is how often the item is looked at: its tag's TTL, or a listing's (the upstream's).
func (it *item) ttl() time.Duration {
	if it.tag != nil {
		return it.tag.Origin.TTLFor(it.tag.Tag.Tag)
	}
	return it.repo.Origin.TagTTL
}
