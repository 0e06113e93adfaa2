package registrytest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Paging is how a test registry pages tags/list.
type Paging int

// The paging styles.
const (
	// PagingNone is go-containerregistry's own: n and last honoured, never a Link.
	PagingNone Paging = iota
	// PagingLink is distribution's: Link: </v2/<repo>/tags/list?n=N&last=T>; rel="next".
	PagingLink
	// PagingQuay is Quay's: Link with an opaque next_page token; last is ignored.
	PagingQuay
	// PagingOpaque is ECR's: the Link's last= is an opaque token (base64, with '=' and
	// '+' in it), not a tag; a last= that is no token of ours is refused with 400.
	PagingOpaque
)

// opaqueToken is PagingOpaque's continuation for the page starting at index i: not a tag
// ('=' and '+' are outside the tag grammar), like ECR's.
func opaqueToken(i int) string {
	return base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("\xfb\xefpage:%d", i)))
}

func parseOpaqueToken(tok string) (int, bool) {
	raw, err := base64.StdEncoding.DecodeString(tok)
	rest, ok := strings.CutPrefix(string(raw), "\xfb\xefpage:")
	if err != nil || !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n >= 0
}

// SetPaging makes tags/list page in style, with pages of at most maxPage tags whatever n
// asks (registries cap page sizes), 0 meaning no cap.
func (r *Registry) SetPaging(style Paging, maxPage int) {
	r.mu.Lock()
	r.paging, r.maxPage = style, maxPage
	r.mu.Unlock()
}

// PushTags stores one small image under each of tags in repo (one image, many tags).
func (r *Registry) PushTags(t testing.TB, repo string, tags []string) {
	t.Helper()
	p := r.PushImage(t, repo, tags[0], types.DockerManifestSchema2)
	for _, tag := range tags[1:] {
		r.PutManifest(t, repo, tag, p.MediaType, p.Body)
	}
}

// servePagedTags answers tags/list itself when a paging style is set.
func (r *Registry) servePagedTags(w http.ResponseWriter, req *http.Request) bool {
	r.mu.Lock()
	style, maxPage := r.paging, r.maxPage
	r.mu.Unlock()
	if style == PagingNone || !strings.HasSuffix(req.URL.Path, "/tags/list") {
		return false
	}
	// All tags, from the registry itself.
	rec := httptest.NewRecorder()
	all, _ := http.NewRequest(http.MethodGet, req.URL.Path, nil)
	r.inner.ServeHTTP(rec, all)
	if rec.Code != http.StatusOK {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return true
	}
	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &list)
	sort.Strings(list.Tags)
	q := req.URL.Query()
	start := 0
	switch style {
	case PagingLink:
		if last := q.Get("last"); last != "" {
			start = sort.SearchStrings(list.Tags, last)
			if start < len(list.Tags) && list.Tags[start] == last {
				start++
			}
		}
	case PagingOpaque:
		if last := q.Get("last"); last != "" {
			n, ok := parseOpaqueToken(last)
			if !ok {
				http.Error(w, `{"errors":[{"code":"PAGINATION_NUMBER_INVALID","message":"bad last token"}]}`, http.StatusBadRequest)
				return true
			}
			start = n
		}
	case PagingQuay:
		if np := q.Get("next_page"); np != "" {
			n, err := strconv.Atoi(strings.TrimPrefix(np, "tok"))
			if err != nil || !strings.HasPrefix(np, "tok") {
				http.Error(w, `{"errors":[{"code":"PAGINATION_NUMBER_INVALID","message":"bad next_page"}]}`, http.StatusBadRequest)
				return true
			}
			start = n
		}
	}
	n := len(list.Tags)
	if v := q.Get("n"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	if maxPage > 0 && n > maxPage {
		n = maxPage
	}
	end := min(start+n, len(list.Tags))
	start = min(start, end)
	page := list.Tags[start:end]
	if end < len(list.Tags) {
		next := url.Values{}
		next.Set("n", strconv.Itoa(n))
		switch style {
		case PagingQuay:
			next.Set("next_page", fmt.Sprintf("tok%d", end))
		case PagingOpaque:
			next.Set("last", opaqueToken(end))
		default:
			next.Set("last", page[len(page)-1])
		}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, req.URL.Path, next.Encode()))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"name": list.Name, "tags": page})
	return true
}
