package upstream

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// maxTagsBody bounds a tags page; 10,000 tags of 128 bytes fit well inside it.
const maxTagsBody = 8 << 20

// TagPage is one page of a repository's tags.
type TagPage struct {
	Tags []string
	// More is set when upstream announced a next page.
	More bool
	// NextLast is the `last` to ask for the next page (the last tag of this page, or what
	// upstream's Link named).
	NextLast string
	// NextPage is Quay's opaque `next_page` token, when upstream pages that way.
	NextPage string
	// Bytes is the size of the page's body, for callers that bound a whole listing.
	Bytes int
}

// PageRequest says which page to ask for.
type PageRequest struct {
	N        int // 0: upstream's default
	Last     string
	NextPage string // Quay's token, from a previous TagPage
	// MaxBytes bounds this page's body (0 or above maxTagsBody: maxTagsBody); a larger body
	// is an error with TooLarge set, read no further than the bound.
	MaxBytes int
}

// Tags fetches one page of repo's tags.
func (r *Registry) Tags(ctx context.Context, repo string, p PageRequest) (_ TagPage, err error) {
	probe, err := r.enter()
	if err != nil {
		return TagPage{}, err
	}
	defer func(caller context.Context) { r.leave(caller, probe, err) }(ctx)
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	q := url.Values{}
	if p.N > 0 {
		q.Set("n", strconv.Itoa(p.N))
	}
	if p.Last != "" {
		q.Set("last", p.Last)
	}
	if p.NextPage != "" {
		q.Set("next_page", p.NextPage)
	}
	path := "tags/list"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	resp, err := r.do(ctx, http.MethodGet, repo, path, "application/json")
	if err != nil {
		return TagPage{}, err
	}
	defer drainClose(resp)
	if err := r.checkResponse(resp); err != nil {
		return TagPage{}, err
	}
	limit := p.MaxBytes
	if limit <= 0 || limit > maxTagsBody {
		limit = maxTagsBody
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return TagPage{}, r.unavailable(err, "reading tags")
	}
	if len(data) > limit {
		return TagPage{}, &Error{Kind: KindInvalid, Upstream: r.name, TooLarge: true, Message: "tags page exceeds " + strconv.Itoa(limit) + " bytes"}
	}
	var body struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(data, &body); err != nil {
		return TagPage{}, r.invalid("tags page is not valid JSON")
	}
	page := TagPage{Tags: body.Tags, Bytes: len(data)}
	if page.Tags == nil {
		page.Tags = []string{}
	}
	if next, ok := ParseNextLink(resp.Header.Values("Link")); ok {
		page.More = true
		page.NextLast = next.Query().Get("last")
		page.NextPage = next.Query().Get("next_page")
		if page.NextLast == "" && page.NextPage == "" && len(page.Tags) > 0 {
			page.NextLast = page.Tags[len(page.Tags)-1]
		}
		if page.NextLast == "" && page.NextPage == "" {
			page.More = false // a next link that says nothing cannot be followed
		}
	}
	return page, nil
}

// ParseNextLink finds the rel="next" target among Link header values (RFC 8288). The URL
// is usually relative (</v2/x/tags/list?n=100&last=b>); only its query matters to us.
func ParseNextLink(values []string) (*url.URL, bool) {
	for _, v := range values {
		for _, link := range splitLinks(v) {
			target, params, ok := strings.Cut(link, ";")
			if !ok {
				continue
			}
			target = strings.TrimSpace(target)
			if !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			if !hasRelNext(params) {
				continue
			}
			u, err := url.Parse(target[1 : len(target)-1])
			if err != nil {
				continue
			}
			return u, true
		}
	}
	return nil, false
}

// splitLinks splits a Link value at commas outside <...>.
func splitLinks(v string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '<':
			depth++
		case '>':
			if depth > 0 {
				depth--
			}
		case ',':
			if depth == 0 {
				out = append(out, v[start:i])
				start = i + 1
			}
		}
	}
	return append(out, v[start:])
}

func hasRelNext(params string) bool {
	for k, v := range parseParams(strings.ReplaceAll(params, ";", ",")) {
		if k == "rel" {
			for _, rel := range strings.Fields(v) {
				if strings.EqualFold(rel, "next") {
					return true
				}
			}
		}
	}
	return false
}
