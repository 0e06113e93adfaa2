package cache

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"regcache/internal/budget"
	"regcache/upstream"
)

// tagList is one repository's tags as regcache assembles them from upstream's pages:
// sorted, without duplicates, each inside the tag grammar. There is one per repository
// and tag TTL, whatever n and last clients ask; every page regcache answers is a slice of
// it, with a Link of regcache's own (its last= is always one of these tags). A tagList is
// never changed once stored, its backoff aside: a step builds a new one. The spec has upstreams list in
// lexical order; one that does not is still listed whole, but a client walking while its
// listing is being read may miss a tag that arrives below the client's last.
type tagList struct {
	Tags []string
	// Complete is set once upstream's last page is in, or the listing stopped at a bound.
	Complete bool
	// TruncatedBy names the setting that cut the listing short ("" when none did).
	TruncatedBy string
	// Next continues an incomplete listing: upstream's own continuation (its last=, an
	// opaque token for ECR, or Quay's next_page). It goes to upstream only, never to a
	// client.
	Next upstream.PageRequest
	// Received and Bytes are what upstream sent for this listing (tags dropped as invalid
	// or duplicate included), held against cache.tags_max_count and tags_max_bytes.
	Received int
	Bytes    int
	// FetchedAt is when the listing's first page was asked for; freshness counts from it.
	FetchedAt time.Time
	// rendered keeps pages already written from this listing (set by keepTags, before the
	// listing is shared with other requests).
	rendered *renderedPages
	// retry is the backoff while upstream fails to move the listing on (backoff.go; set by
	// keepTags too): the one thing about a stored listing that changes.
	retry *retry
}

// renderedPages holds the last pages answered from one listing, a few slots by n and
// last. Update checkers ask the same slice over and over (What's Up Docker n=1000 from
// the start, Renovate n=10000): they get the bytes already written instead of a JSON
// body of every tag built per request. The listing never changes, so neither do they.
type renderedPages [4]atomic.Pointer[renderedPage]

type renderedPage struct {
	n    int
	last string
	page TagsAnswer
}

// after is the index of the first tag after last (all of them for ""), in the spec's
// lexical order.
func (l *tagList) after(last string) int {
	if last == "" {
		return 0
	}
	return sort.Search(len(l.Tags), func(i int) bool { return l.Tags[i] > last })
}

// covers reports whether l holds the n tags after last, or all there are.
func (l *tagList) covers(r TagsRequest) bool {
	return l.Complete || len(l.Tags)-l.after(r.Last) >= r.N
}

// beyond reports whether r asks for what lies past all l holds: a client following
// regcache's Links to the end of an incomplete listing.
func (l *tagList) beyond(r TagsRequest) bool {
	return !l.Complete && r.Last != "" && l.after(r.Last) == len(l.Tags)
}

// nothingFor reports whether l holds nothing to answer r with: r asks past all l holds
// of a listing not yet complete.
func (l *tagList) nothingFor(r TagsRequest) bool {
	return !l.Complete && l.after(r.Last) == len(l.Tags)
}

// cost is what the listing holds in memory, for the cache's budget.
func (l *tagList) cost() int64 {
	n := int64(64 + len(l.Next.Last) + len(l.Next.NextPage))
	for _, t := range l.Tags {
		n += int64(len(t)) + 16
	}
	return n
}

// page answers r from l: up to r.N tags after r.Last, and whether more remain (in l, or
// upstream when l is incomplete).
func (l *tagList) page(repo string, r TagsRequest) TagsAnswer {
	if l.rendered == nil {
		return l.render(repo, r)
	}
	slot := &l.rendered[(r.N+len(r.Last))%len(l.rendered)]
	if p := slot.Load(); p != nil && p.n == r.N && p.last == r.Last {
		return p.page
	}
	p := l.render(repo, r)
	slot.Store(&renderedPage{n: r.N, last: strings.Clone(r.Last), page: p})
	return p
}

func (l *tagList) render(repo string, r TagsRequest) TagsAnswer {
	i := l.after(r.Last)
	j := min(i+r.N, len(l.Tags))
	p := TagsAnswer{Body: tagsBody(repo, l.Tags[i:j]), More: j < len(l.Tags) || !l.Complete, NextLast: r.Last, FetchedAt: l.FetchedAt}
	if j > i {
		p.NextLast = l.Tags[j-1]
	}
	if j == len(l.Tags) {
		p.TruncatedBy = l.TruncatedBy
	}
	return p
}

// tagsBody writes {"name":repo,"tags":[...]}. The route and the tag grammar leave nothing
// in either that JSON would escape.
func tagsBody(repo string, tags []string) []byte {
	n := len(`{"name":"","tags":[]}`) + len(repo)
	for _, t := range tags {
		n += len(t) + 3
	}
	b := make([]byte, 0, n)
	b = append(append(append(b, `{"name":"`...), repo...), `","tags":[`...)
	for i, t := range tags {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(append(append(b, '"'), t...), '"')
	}
	return append(b, "]}"...)
}

// extend asks upstream for up to cfg.TagsMaxPages more pages of base (of a new listing
// when base is nil, fetched as of now) and returns the grown listing. A failure on the first page is the
// answer; a failure after it keeps what came (the next request goes on from there). For
// background work (reason), each page takes the upstream's budget, and a refusal is a
// failure like any other.
func (c *Cache) extend(o *Origin, repo string, base *tagList, now time.Time, reason budget.Reason) (*tagList, error) {
	l := &tagList{FetchedAt: now}
	if base != nil {
		*l = *base
		l.Tags = slices.Clone(base.Tags)
		l.rendered, l.retry = nil, nil // base's; keepTags gives the new listing its own
	}
	sorted := len(l.Tags)
	dropped := 0
	for pages := 0; pages < c.cfg.TagsMaxPages && !l.Complete; pages++ {
		req := l.Next
		req.N, req.MaxBytes = MaxTagsPage, c.cfg.TagsMaxBytes-l.Bytes
		if req.MaxBytes <= 0 {
			l.truncate(truncatedByBytes)
			break
		}
		p, err := c.tagsPage(o, repo, req, reason)
		var ue *upstream.Error
		if errors.As(err, &ue) && ue.TooLarge {
			l.truncate(truncatedByBytes)
			break
		}
		if err != nil {
			if pages == 0 {
				return nil, err
			}
			if errors.Is(err, budget.ErrSpent) {
				break // the background listing goes on when the budget allows
			}
			c.log.Warn("tags listing paused by an upstream failure; the next request goes on",
				zap.String("upstream", o.Registry.Name()), zap.String("repository", repo), zap.Error(err))
			break
		}
		l.Bytes += p.Bytes
		tags := p.Tags
		if room := c.cfg.TagsMaxCount - l.Received; len(tags) > room {
			tags = tags[:room]
			l.truncate(truncatedByCount)
		}
		l.Received += len(tags)
		for _, t := range tags {
			if upstream.ValidTag(t) {
				l.Tags = append(l.Tags, t)
			} else {
				dropped++
			}
		}
		next := upstream.PageRequest{Last: p.NextLast, NextPage: p.NextPage}
		// An empty page, or a continuation that does not move, ends the listing: an
		// upstream must not keep regcache asking for the same page.
		if !p.More || len(p.Tags) == 0 || next == l.Next {
			l.Complete, l.Next = true, upstream.PageRequest{}
		} else if !l.Complete {
			l.Next = next
		}
	}
	if len(l.Tags) > sorted {
		slices.Sort(l.Tags)
		l.Tags = slices.Compact(l.Tags)
	}
	if dropped > 0 {
		c.tagsDropped.Add(int64(dropped))
	}
	if l.TruncatedBy != "" && (base == nil || base.TruncatedBy == "") {
		c.tagsTruncated.Add(1)
		c.log.Warn("tags listing cut at its bound; clients get the tags read so far",
			zap.String("upstream", o.Registry.Name()), zap.String("repository", repo),
			zap.String("setting", l.TruncatedBy), zap.Int("tags", len(l.Tags)), zap.Int("bytes", l.Bytes))
	}
	return l, nil
}

// tagsPage asks upstream for one page, taking the budget first for background work.
func (c *Cache) tagsPage(o *Origin, repo string, req upstream.PageRequest, reason budget.Reason) (p upstream.TagPage, err error) {
	done, err := spend(o, reason, false)
	if err != nil {
		return upstream.TagPage{}, err
	}
	defer func() { done(err) }()
	return o.Registry.Tags(context.Background(), repo, req)
}

// The settings that may cut a listing short, as TruncatedBy names them.
const (
	truncatedByCount = "cache.tags_max_count"
	truncatedByBytes = "cache.tags_max_bytes"
)

// truncate ends the listing at a bound, named by the setting that set it.
func (l *tagList) truncate(setting string) {
	l.Complete, l.TruncatedBy, l.Next = true, setting, upstream.PageRequest{}
}
