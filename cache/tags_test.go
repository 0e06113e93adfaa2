package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// tagsCache is a Cache without a shared tier in front of reg, with cfg's tags bounds.
func tagsCache(t *testing.T, reg *registrytest.Registry, ttl time.Duration, cfg Config) (*Cache, *Origin) {
	t.Helper()
	if cfg.RevalidateWait == 0 {
		cfg.RevalidateWait = 5 * time.Second
	}
	return newLocal(t, reg, cfg, ttl)
}

// walkTags follows NextLast from the start with pages of n, as a client follows Links,
// returning every tag and the most upstream pages one request cost.
func walkTags(t *testing.T, next func(TagsRequest) TagsAnswer, reg *registrytest.Registry, n int) (tags []string, worst int) {
	t.Helper()
	req := TagsRequest{N: n}
	for range 200 {
		before := reg.Count("GET", "tags")
		p := next(req)
		worst = max(worst, reg.Count("GET", "tags")-before)
		var body struct{ Tags []string }
		if err := json.Unmarshal(p.Body, &body); err != nil {
			t.Fatal(err)
		}
		tags = append(tags, body.Tags...)
		if !p.More {
			return tags, worst
		}
		req.Last = p.NextLast
	}
	t.Fatal("the walk never ends")
	return nil, 0
}

func numberedTags(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("v%04d", i)
	}
	return out
}

func sameTags(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d tags, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("tag %d: %q, want %q", i, got[i], want[i])
		}
	}
}

// With tag_ttl 0 (and no max_stale) every listing is stale as soon as it is made, yet a
// client following the Links of a long listing still reaches its end, each request within
// the page bound: a walk past the end of a listing goes on with it instead of starting over.
func TestTagsWalkEndsUnderZeroTTL(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	want := numberedTags(200)
	reg.PushTags(t, "team/app", want)
	reg.SetPaging(registrytest.PagingLink, 10)
	c, o := tagsCache(t, reg, 0, Config{TagsMaxPages: 3})
	got, worst := walkTags(t, func(r TagsRequest) TagsAnswer {
		p, _, err := c.Tags(context.Background(), o, "team/app", r, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}, reg, 100)
	sameTags(t, got, want)
	if worst > 3 {
		t.Fatalf("one request cost %d upstream pages, want at most tags_max_pages_per_request (3)", worst)
	}
}

// A client at the end of an incomplete listing while upstream fails gets the failure, not
// an empty page whose Link names the page itself (a loop for a client that follows Links
// for as long as there are any, What's Up Docker): with upstream held back that loop would
// cost nothing and never end. Before the end, what the listing holds is still served.
func TestTagsEndOfIncompleteListingWhileUpstreamFails(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushTags(t, "team/app", numberedTags(200))
	reg.SetPaging(registrytest.PagingLink, 10)
	c, o := tagsCache(t, reg, time.Minute, Config{TagsMaxPages: 3})
	first, _, err := c.Tags(context.Background(), o, "team/app", TagsRequest{N: 20}, time.Now())
	if err != nil || !first.More || first.NextLast != "v0019" {
		t.Fatalf("first page: more=%v next=%q err=%v", first.More, first.NextLast, err)
	}
	reg.SetFault(registrytest.RateLimited(time.Hour))
	// Inside what the listing holds (30 tags): served.
	if p, _, err := c.Tags(context.Background(), o, "team/app", TagsRequest{N: 5, Last: "v0019"}, time.Now()); err != nil || p.NextLast != "v0024" {
		t.Fatalf("inside the listing: next=%q err=%v", p.NextLast, err)
	}
	// Past it: the rate limit, twice (the second time from the guard's hold).
	for i := range 2 {
		p, _, err := c.Tags(context.Background(), o, "team/app", TagsRequest{N: 100, Last: "v0029"}, time.Now())
		if upstream.KindOf(err) != upstream.KindRateLimited {
			t.Fatalf("request %d past the listing's end: page %s more=%v next=%q, err %v; want the rate limit", i, p.Body, p.More, p.NextLast, err)
		}
	}
}

// A client past the end of what the listing holds, while the step that goes on takes
// longer than revalidate_wait, waits for it as a cold request does: there is nothing stale
// to answer with instead (this was a 504 under a loaded machine's slow steps).
func TestTagsEndOfListingWaitsForASlowStep(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushTags(t, "team/app", numberedTags(60))
	reg.SetPaging(registrytest.PagingLink, 10)
	c, o := tagsCache(t, reg, time.Minute, Config{TagsMaxPages: 2, RevalidateWait: 50 * time.Millisecond})
	if _, _, err := c.Tags(context.Background(), o, "team/app", TagsRequest{N: 20}, time.Now()); err != nil {
		t.Fatal(err)
	}
	reg.SetFault(registrytest.Delay(200 * time.Millisecond)) // each page; a step of 2 pages
	p, _, err := c.Tags(context.Background(), o, "team/app", TagsRequest{N: 20, Last: "v0019"}, time.Now())
	if err != nil || p.NextLast != "v0039" {
		t.Fatalf("past the end during a slow step: next=%q err=%v; want the next 20 tags", p.NextLast, err)
	}
}

// A listing stops at cache.tags_max_count: the tags read so far are served, the last page
// says which setting cut it, and the cut is counted.
func TestTagsListingCutAtMaxCount(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushTags(t, "team/app", numberedTags(300))
	reg.SetPaging(registrytest.PagingLink, 20)
	c, o := tagsCache(t, reg, time.Minute, Config{TagsMaxCount: 50})
	p, _, err := c.Tags(context.Background(), o, "team/app", TagsRequest{N: MaxTagsPage}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Tags []string }
	_ = json.Unmarshal(p.Body, &body)
	sameTags(t, body.Tags, numberedTags(50))
	if p.More || p.TruncatedBy != "cache.tags_max_count" || c.Stats().TagsTruncated != 1 {
		t.Fatalf("More=%v TruncatedBy=%q truncated=%d", p.More, p.TruncatedBy, c.Stats().TagsTruncated)
	}
	if n := reg.Count("GET", "tags"); n != 3 {
		t.Fatalf("%d upstream pages for 50 tags in pages of 20, want 3", n)
	}
}
