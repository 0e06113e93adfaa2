package cache

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

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

// TagPage is a page of tags as regcache answers it.
type TagPage struct {
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

// tagsFresh reports whether l is within o's tag TTL.
func (c *Cache) tagsFresh(o *Origin, l *tagList) bool {
	return l != nil && c.now().Sub(l.FetchedAt) < o.TagTTL
}

// Tags answers a page of repo's tags from the repository's one listing, assembling it
// from upstream as far as the page needs and one request may go. The listing is
// coalesced and shared (within the process, and through Redis across a fleet); it is
// served stale while upstream fails, like tag lookups.
func (c *Cache) Tags(ctx context.Context, o *Origin, repo string, req TagsRequest) (TagPage, Status, error) {
	repo = strings.Clone(repo) // may alias the caller's request buffer
	up := o.Registry.Name()
	key := tagsKey(up, repo)
	local := c.store.tagList(key)
	if c.tagsFresh(o, local) && local.covers(req) {
		return local.page(repo, req), Hit, nil
	}
	if local == nil {
		if err := c.store.negative(negativeKey(up, "", key)); err != nil {
			return TagPage{}, Miss, err
		}
	}
	fetch := func() (*tagList, error) { return c.advanceTags(o, repo, req) }
	if local == nil || local.nothingFor(req) {
		// Nothing here to answer with (a cold repository, or a client past the end of what
		// the listing holds so far): wait for upstream as a cold request does. An empty page
		// would carry a Link to itself, and What's Up Docker follows a Link for as long as
		// there is one: while upstream failed (or a hold was on, costing nothing) that was a
		// loop as fast as the client could ask. A failure is the answer.
		l, err, _ := c.tagFlights.Do(ctx, key, fetch)
		if err != nil {
			return TagPage{}, Miss, err
		}
		return l.page(repo, req), Miss, nil
	}
	wctx, cancel := context.WithTimeout(ctx, c.cfg.RevalidateWait)
	defer cancel()
	l, err, _ := c.tagFlights.Do(wctx, key, fetch)
	switch {
	case err == nil:
		return l.page(repo, req), Miss, nil
	case ctx.Err() != nil:
		return TagPage{}, Miss, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded) || serveStaleOn(err):
		if c.tagsFresh(o, local) {
			return local.page(repo, req), Hit, nil // what there is, with a Link to go on
		}
		if c.now().Sub(local.FetchedAt) < o.TagTTL+c.cfg.MaxStale {
			c.log.Warn("serving stale tags", zap.String("upstream", up), zap.String("repository", repo), zap.Error(err))
			return local.page(repo, req), Stale, nil
		}
		return TagPage{}, Miss, err
	default:
		return TagPage{}, Miss, err
	}
}

// advanceTags moves repo's listing forward for req, at most one step (cfg.TagsMaxPages
// upstream pages): with a shared tier, a listing another replica stored that answers req
// (or that moved on while this one waited for its lock) is taken as it is.
func (c *Cache) advanceTags(o *Origin, repo string, req TagsRequest) (*tagList, error) {
	up := o.Registry.Name()
	key := tagsKey(up, repo)
	var seen *tagList
	looks := 0
	look := func() (*tagList, bool) {
		l := c.shared.getTagList(up, repo, c.cfg, c.now())
		looks++
		if looks == 1 {
			seen = l
		}
		if l == nil {
			return nil, false
		}
		moved := looks > 1 && (seen == nil || !l.FetchedAt.Equal(seen.FetchedAt) || len(l.Tags) != len(seen.Tags) || l.Complete != seen.Complete)
		if !(c.tagsFresh(o, l) && l.covers(req)) && !moved {
			return nil, false
		}
		c.keepTags(o, key, l)
		return l, true
	}
	ask := func() (*tagList, error) {
		// The furthest listing known here: ours (another request's step may have landed
		// since this request looked) or the fleet's.
		base := c.furtherTags(o, c.store.tagList(key), seen)
		switch {
		case base != nil && c.tagsFresh(o, base) && base.covers(req):
			return base, nil // another request's step, landed since this one looked
		case base != nil && !c.tagsFresh(o, base) && !base.beyond(req):
			base = nil // stale: list anew, unless req walks on past its end
		}
		l, err := c.extend(o, repo, base)
		if err != nil {
			return nil, err
		}
		c.keepTags(o, key, l)
		if c.shared != nil {
			c.shared.setTagList(up, repo, l, c.tagsKeep(o))
		}
		return l, nil
	}
	l, err := fleet(c.shared, "tags:"+up+"/"+repo, c.fleetWait(o), look, ask)
	if c.remember(up, "", key, err) && upstream.KindOf(err) == upstream.KindNotFound {
		// The repository is gone upstream: stop serving its tags. A denial is not a
		// deletion (as for tags in manifests.go): the listing stays for when access returns.
		c.store.del(key)
		if c.shared != nil {
			c.shared.delTagList(up, repo)
		}
	}
	return l, err
}

// furtherTags picks the listing to go on from: a fresh one over a stale one, then a
// complete one, then the longer.
func (c *Cache) furtherTags(o *Origin, a, b *tagList) *tagList {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case c.tagsFresh(o, a) != c.tagsFresh(o, b):
		if c.tagsFresh(o, a) {
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
	c.store.set(key, l, l.cost(), c.tagsKeep(o))
}
