package cache

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"regcache/upstream"
)

// MaxTagsPage is the most tags one answer carries; Renovate asks for 10,000.
const MaxTagsPage = 10_000

// maxUpstreamPages bounds how many upstream pages one answer may gather, so an upstream
// whose Link never ends cannot keep a request going forever.
const maxUpstreamPages = 200

// TagPage is a page of tags as regcache answers it.
type TagPage struct {
	// Body is the JSON answer, {"name":...,"tags":[...]}, ready to send.
	Body []byte
	// More is set when tags remain after this page; NextLast (and NextPage, for Quay-style
	// upstreams) continue from here.
	More      bool
	NextLast  string
	NextPage  string
	FetchedAt time.Time
}

// TagsRequest names a page: up to N tags after Last (or from upstream's NextPage token).
type TagsRequest struct {
	N        int
	Last     string
	NextPage string
}

func tagsKey(up, repo string, r TagsRequest) string {
	return "l\x00" + up + "\x00" + repo + "\x00" + strconv.Itoa(r.N) + "\x00" + r.Last + "\x00" + r.NextPage
}

// Tags answers a page of repo's tags, gathering upstream pages as needed. Pages are cached
// for the upstream's tag TTL and served stale while upstream fails, like tag lookups.
func (c *Cache) Tags(ctx context.Context, o *Origin, repo string, req TagsRequest) (TagPage, Status, error) {
	repo = strings.Clone(repo) // may alias the caller's request buffer
	up := o.Registry.Name()
	key := tagsKey(up, repo, req)
	now := c.now()
	var cached *TagPage
	if v, ok := c.store.rc.Get(key); ok {
		cached, _ = v.(*TagPage)
	}
	if cached != nil && now.Sub(cached.FetchedAt) < o.TagTTL {
		return *cached, Hit, nil
	}
	if cached == nil {
		if err := c.store.negative(negativeKey(up, "", key)); err != nil {
			return TagPage{}, Miss, err
		}
	}
	ask := func() (TagPage, error) {
		p, err := c.gatherTags(o, repo, req)
		if err != nil {
			return p, err
		}
		if ttl := o.TagTTL + c.cfg.MaxStale; ttl > 0 {
			c.store.set(key, &p, int64(len(p.Body)), ttl)
			if c.shared != nil {
				c.shared.setTags(up, repo, req, &p, ttl)
			}
		}
		return p, nil
	}
	// With a shared tier the fleet asks upstream once per page: another replica's fresh page
	// is taken as it is (with its fetch time), else one replica gathers it while the others
	// wait.
	look := func() (TagPage, bool) {
		p := c.shared.getTags(up, repo, req)
		if p == nil {
			return TagPage{}, false
		}
		if now := c.now(); p.FetchedAt.After(now) {
			p.FetchedAt = now
		}
		if c.now().Sub(p.FetchedAt) >= o.TagTTL {
			return TagPage{}, false
		}
		if ttl := o.TagTTL + c.cfg.MaxStale; ttl > 0 {
			c.store.set(key, p, int64(len(p.Body)), ttl)
		}
		return *p, true
	}
	fetch := func() (TagPage, error) {
		p, err := fleet(c.shared, "tags:"+up+"/"+repo+"?"+tagsQuery(req), c.fleetWait(o), look, ask)
		if err != nil && c.remember(up, "", key, err) {
			c.store.del(key)
			if c.shared != nil {
				c.shared.delTags(up, repo, req)
			}
		}
		return p, err
	}
	if cached == nil {
		p, err, _ := c.tagFlights.Do(ctx, key, fetch)
		return p, Miss, err
	}
	wctx, cancel := context.WithTimeout(ctx, c.cfg.RevalidateWait)
	defer cancel()
	p, err, _ := c.tagFlights.Do(wctx, key, fetch)
	switch {
	case err == nil:
		return p, Miss, nil
	case ctx.Err() != nil:
		return TagPage{}, Miss, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded) || serveStaleOn(err):
		c.log.Warn("serving stale tags", zap.String("upstream", up), zap.String("repository", repo), zap.Error(err))
		return *cached, Stale, nil
	default:
		return TagPage{}, Miss, err
	}
}

// gatherTags collects up to req.N tags, following upstream's pages: registries cap their
// page size (often at 100 or 1,000) below what a client may ask for.
func (c *Cache) gatherTags(o *Origin, repo string, req TagsRequest) (TagPage, error) {
	want := req.N
	tags := []string{}
	page := upstream.PageRequest{N: want, Last: req.Last, NextPage: req.NextPage}
	out := TagPage{}
	for i := 0; ; i++ {
		p, err := o.Registry.Tags(context.Background(), repo, page)
		if err != nil {
			return TagPage{}, err
		}
		tags = append(tags, p.Tags...)
		if len(tags) > want && page.NextPage == "" && p.NextPage == "" {
			// Upstream gave more than asked; cut, and continue from the cut next time.
			tags = tags[:want]
			out.More, out.NextLast = true, tags[want-1]
			break
		}
		if !p.More || len(p.Tags) == 0 {
			break
		}
		if len(tags) >= want || i+1 >= maxUpstreamPages {
			out.More, out.NextLast, out.NextPage = true, p.NextLast, p.NextPage
			if out.NextLast == "" {
				out.NextLast = tags[len(tags)-1]
			}
			break
		}
		page = upstream.PageRequest{N: want - len(tags), Last: p.NextLast, NextPage: p.NextPage}
	}
	body, err := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{repo, tags})
	if err != nil {
		return TagPage{}, err
	}
	out.Body = body
	out.FetchedAt = c.now()
	return out, nil
}
