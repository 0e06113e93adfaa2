package proxy

import (
	"net/url"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"regcache/cache"
	"regcache/upstream"
)

var strLink = []byte("Link")

// serveTags answers /v2/<name>/tags/list?n=&last=. The next-page Link is relative and in
// the client's own path form (prefix before or after /v2, ns= kept), and absent on the last page: What's Up
// Docker loops for as long as a Link is present. Its last= is always a tag of regcache's
// own listing, never an upstream's page token (ECR's are opaque); a next_page a client
// sends is no longer regcache's and is ignored.
func (p *Proxy) serveTags(ctx *fasthttp.RequestCtx, rt *Route, rawPath []byte, now time.Time) cache.Status {
	args := ctx.QueryArgs()
	req := cache.TagsRequest{N: cache.MaxTagsPage}
	nGiven := args.Has("n")
	if nGiven {
		n, err := strconv.Atoi(string(args.Peek("n")))
		if err != nil || n < 0 {
			writeError(ctx, errPaginationInvalid.with("n must be a whole number from 0 to 10000"))
			return cache.None
		}
		req.N = min(n, cache.MaxTagsPage)
	}
	if last := args.Peek("last"); len(last) > 0 {
		if !upstream.ValidTag(last) {
			writeError(ctx, errTagInvalid.with("last must be a tag, got "+quote(last)))
			return cache.None
		}
		req.Last = string(last)
	}
	if req.N == 0 {
		// The spec: n=0 asks for an empty list.
		ctx.SetContentType("application/json")
		setAPIVersion(ctx)
		ctx.SetBodyString(`{"name":"` + rt.Repo + `","tags":[]}`)
		return cache.None
	}
	page, st, err := p.cache.Tags(detached, rt.Upstream.Origin, rt.Repo, req, now)
	if err != nil {
		writeError(ctx, fromUpstream(err, errNameUnknown))
		return cache.None
	}
	if page.More {
		q := url.Values{}
		if nGiven {
			q.Set("n", strconv.Itoa(req.N))
		}
		if page.NextLast != "" {
			q.Set("last", page.NextLast)
		}
		if ns := args.PeekBytes(strNS); len(ns) > 0 {
			q.Set("ns", string(ns))
		}
		ctx.Response.Header.SetBytesK(strLink, "<"+string(rawPath)+"?"+q.Encode()+`>; rel="next"`)
	}
	ctx.SetContentType("application/json")
	setAPIVersion(ctx)
	ctx.Response.Header.SetBytesKV(strXCache, xCache[st])
	setAge(&ctx.Response.Header, now, page.FetchedAt)
	if page.TruncatedBy != "" {
		// The listing stopped at a bound: this is all regcache will list, not all there is.
		ctx.Response.Header.Set("X-Regcache-Truncated", page.TruncatedBy)
	}
	ctx.Response.SetBodyRaw(page.Body)
	return st
}
