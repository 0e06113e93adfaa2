package cache

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

	"regcache/internal/budget"
	"regcache/upstream"
)

// MaxTagsPage is the most tags one answer carries; Renovate asks for 10,000.
const MaxTagsPage = 10_000

// Bounds of a tags listing (cache.tags_max_pages_per_request, tags_max_count and
// tags_max_bytes), for zero Config fields.
const (
	// DefaultTagsMaxPages bounds the upstream pages one client request may cost; the rest
	// of a long listing is read on the requests that follow regcache's Links.
	DefaultTagsMaxPages = 20
	// DefaultTagsMaxCount and DefaultTagsMaxBytes bound a whole listing: the tags and the
	// page bytes upstream sends for one repository.
	DefaultTagsMaxCount = 100_000
	DefaultTagsMaxBytes = 8 << 20
)

// minTagsKeep is the least time a listing is kept, whatever tag_ttl and max_stale say, so
// that a client following Links through a long listing finishes its walk.
const minTagsKeep = time.Minute

// TagsAnswer is a page of tags as regcache answers it (upstream.TagPage is a page as
// upstream sent it).
type TagsAnswer struct {
	// Body is the JSON answer, {"name":...,"tags":[...]}, ready to send.
	Body []byte
	// More is set when tags remain after this page; the next page starts after NextLast,
	// always a tag (or the request's own last, when this page came back empty).
	More     bool
	NextLast string
	// TruncatedBy names the setting that cut the listing short, on its last page.
	TruncatedBy string
	FetchedAt   time.Time
}

// TagsRequest names a page: up to N tags after Last.
type TagsRequest struct {
	N    int
	Last string
	// Background is whose request this is when no client waits for it (a watch's listing):
	// each upstream page it costs takes the upstream's budget, and it is refused
	// (budget.ErrSpent) when the budget is spent, as Request.Background is.
	Background budget.Reason
}

func tagsKey(up, repo string) string { return "l\x00" + up + "\x00" + repo }

func (s *store) tagList(key string) *tagList {
	v, ok := s.rc.Get(key)
	if !ok {
		return nil
	}
	l, _ := v.(*tagList)
	return l
}

// tagsFresh reports whether l is within o's tag TTL at now.
func tagsFresh(o *Origin, l *tagList, now time.Time) bool {
	return l != nil && now.Sub(l.FetchedAt) < o.TagTTL
}

// Tags answers a page of repo's tags from the repository's one listing, assembling it
// from upstream as far as the page needs and one request may go. The listing is
// coalesced and shared (within the process, and through Redis across a fleet); it is
// served stale while upstream fails, like tag lookups. now is the request's clock read.
func (c *Cache) Tags(ctx context.Context, o *Origin, repo string, req TagsRequest, now time.Time) (TagsAnswer, Status, error) {
	repo = strings.Clone(repo) // may alias the caller's request buffer
	up := o.Registry.Name()
	key := tagsKey(up, repo)
	local := c.store.tagList(key)
	if tagsFresh(o, local, now) && local.covers(req) {
		return local.page(repo, req), Hit, nil
	}
	lk := &listLookup{c: c, o: o, up: up, repo: repo, req: req, now: now, mkey: key}
	if local == nil || local.nothingFor(req) {
		// Nothing here to answer with (a cold repository, or a client past the end of what
		// the listing holds so far): wait for upstream as a cold request does. An empty page
		// would carry a Link to itself, and What's Up Docker follows a Link for as long as
		// there is one: while upstream failed (or a hold was on, costing nothing) that was a
		// loop as fast as the client could ask. A failure is the answer.
		l, err := load(ctx, &c.listFlights, c.fleet, c.fleetWait(o), lk)
		if err != nil {
			return TagsAnswer{}, Miss, err
		}
		return l.page(repo, req), Miss, nil
	}
	// Upstream failed to move the listing on a moment ago: it is served as it is, without
	// asking again, until the backoff passes (backoff.go).
	if local.retry != nil && local.retry.holding(now) != nil {
		if st, ok := c.tagsServable(o, local, now); ok {
			if st == Stale {
				o.backoffServed.Add(1)
			}
			return local.page(repo, req), st, nil
		}
	}
	wctx, cancel := context.WithTimeout(ctx, c.cfg.RevalidateWait)
	defer cancel()
	l, err := load(wctx, &c.listFlights, c.fleet, c.fleetWait(o), lk)
	switch {
	case err == nil:
		return l.page(repo, req), Miss, nil
	case ctx.Err() != nil:
		return TagsAnswer{}, Miss, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded) || serveStaleOn(err):
		st, ok := c.tagsServable(o, local, now)
		if !ok {
			return TagsAnswer{}, Miss, err
		}
		if st == Stale {
			c.log.Warn("serving stale tags", zap.String("upstream", up), zap.String("repository", repo), zap.Error(err))
		}
		return local.page(repo, req), st, nil
	default:
		return TagsAnswer{}, Miss, err
	}
}

// tagsServable says how local answers while upstream fails: a Hit while fresh (what there
// is, with a Link to go on), Stale within max_stale; not at all past it.
func (c *Cache) tagsServable(o *Origin, local *tagList, now time.Time) (Status, bool) {
	switch {
	case tagsFresh(o, local, now):
		return Hit, true
	case now.Sub(local.FetchedAt) < o.TagTTL+c.cfg.MaxStale:
		return Stale, true
	}
	return Miss, false
}

// listLookup moves a repository's listing forward for req, at most one step
// (cfg.TagsMaxPages upstream pages), for load: a listing another replica shared that
// answers req (or that moved on while this one waited for its lock) is taken as it is.
type listLookup struct {
	c        *Cache
	o        *Origin
	up, repo string
	req      TagsRequest
	now      time.Time
	mkey     string // its memory key
	// seen is the fleet's listing at the first look; looks counts the looks, so that a
	// listing that moved since is taken even when it does not cover req.
	seen  *tagList
	looks int
}

// key is also the fleet lock's name: <prefix>lock:tags:<upstream>/<repo>.
func (l *listLookup) key() string { return "tags:" + l.up + "/" + l.repo }

func (l *listLookup) waits() bool { return true }

func (l *listLookup) background() bool { return l.req.Background != budget.Client }

func (l *listLookup) memory() (*tagList, bool, error) {
	local := l.c.store.tagList(l.mkey)
	if local == nil {
		return nil, false, l.c.store.negative(negativeKey(l.up, "", l.mkey))
	}
	return local, tagsFresh(l.o, local, l.now) && local.covers(l.req), nil
}

func (l *listLookup) fleet() (*tagList, bool) {
	now := time.Now() // another replica's listing, judged by the clock as it is read
	tl := l.c.fleet.getTagList(l.up, l.repo, l.c.cfg, now)
	l.looks++
	if l.looks == 1 {
		l.seen = tl
	}
	if tl == nil {
		return nil, false
	}
	seen := l.seen
	moved := l.looks > 1 && (seen == nil || !tl.FetchedAt.Equal(seen.FetchedAt) || len(tl.Tags) != len(seen.Tags) || tl.Complete != seen.Complete)
	if !(tagsFresh(l.o, tl, now) && tl.covers(l.req)) && !moved {
		return nil, false
	}
	l.c.keepTags(l.o, l.mkey, tl)
	return tl, true
}

func (l *listLookup) fetch() (*tagList, error) {
	// The furthest listing known here: ours or the fleet's.
	base := l.c.furtherTags(l.o, l.c.store.tagList(l.mkey), l.seen, l.now)
	if base != nil && !tagsFresh(l.o, base, l.now) && !base.beyond(l.req) {
		base = nil // stale: list anew, unless req walks on past its end
	}
	return l.c.extend(l.o, l.repo, base, time.Now(), l.req.Background)
}

func (l *listLookup) store(tl *tagList) *tagList {
	l.c.keepTags(l.o, l.mkey, tl)
	l.c.fleet.setTagList(l.up, l.repo, tl, l.c.tagsKeep(l.o))
	return tl
}

func (l *listLookup) failed(err error) {
	c := l.c
	if c.remember(l.up, "", l.mkey, err) && upstream.KindOf(err) == upstream.KindNotFound {
		// The repository is gone upstream: stop serving its tags. A denial is not a
		// deletion (as for tags in manifests.go): the listing stays for when access returns.
		c.store.del(l.mkey)
		c.fleet.delTagList(l.up, l.repo)
		return
	}
	if tl := c.store.tagList(l.mkey); tl != nil && tl.retry != nil && serveStaleOn(err) {
		b := tl.retry.fail(err, time.Now(), c.cfg.ErrorBackoff, backoffTTL(l.o, ""))
		c.logBackoff(l.up, l.repo, "tags/list", b, err)
	}
}

// furtherTags picks the listing to go on from: a fresh one over a stale one, then a
// complete one, then the longer.
func (c *Cache) furtherTags(o *Origin, a, b *tagList, now time.Time) *tagList {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case tagsFresh(o, a, now) != tagsFresh(o, b, now):
		if tagsFresh(o, a, now) {
			return a
		}
		return b
	case a.Complete != b.Complete:
		if a.Complete {
			return a
		}
		return b
	case len(b.Tags) > len(a.Tags):
		return b
	}
	return a
}

// tagsKeep is how long a listing is kept: while it may be served, stale included, and at
// least minTagsKeep.
func (c *Cache) tagsKeep(o *Origin) time.Duration {
	return max(o.TagTTL+c.cfg.MaxStale, minTagsKeep)
}

func (c *Cache) keepTags(o *Origin, key string, l *tagList) {
	if l.rendered == nil {
		l.rendered = new(renderedPages)
	}
	if l.retry == nil {
		l.retry = new(retry)
	}
	c.store.set(key, l, l.cost(), c.tagsKeep(o))
}
