package main

// Tags listings: every tag exactly once through n, last and Link in each routing form,
// whatever paging upstream uses (distribution's Link, Quay's next_page, ECR's opaque
// tokens), stale when upstream fails. regcache assembles one listing per repository and
// tag TTL (issue #10, items 3 to 5), serves every n/last slice from it with Links of its
// own, bounds what one client request may cost upstream, and bounds what a hostile
// upstream can make it hold.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// linkLast checks that a Link regcache sent names a tag as its last= (never an
// upstream's opaque token) and returns it.
func linkLast(t *testing.T, r harness.Response) string {
	t.Helper()
	link := r.Header.Get("Link")
	if link == "" {
		return ""
	}
	target, _, _ := strings.Cut(link, ";")
	u, err := url.Parse(strings.Trim(strings.TrimSpace(target), "<>"))
	if err != nil {
		t.Fatalf("Link %q: %v", link, err)
	}
	last := u.Query().Get("last")
	if u.Query().Has("last") && !upstream.ValidTag(last) {
		t.Fatalf("Link %q carries last=%q, which is no tag", link, last)
	}
	if u.Query().Has("next_page") {
		t.Fatalf("Link %q passes on an upstream page token", link)
	}
	return last
}

// followTags lists every tag by following Link headers from start, as What's Up Docker
// does, checking each Link is relative, keeps the client's path form and names a tag.
func followTags(t *testing.T, rc *harness.Instance, start, wantPrefix string) (tags []string, pages int) {
	t.Helper()
	next := start
	for next != "" {
		pages++
		if pages > 100 {
			t.Fatal("Link never ends")
		}
		r := rc.Do(t, http.MethodGet, next)
		if r.Status != 200 {
			t.Fatalf("GET %s: %d %s", next, r.Status, r.Body)
		}
		var body struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(r.Body, &body); err != nil {
			t.Fatal(err)
		}
		tags = append(tags, body.Tags...)
		linkLast(t, r)
		next = ""
		if link := r.Header.Get("Link"); link != "" {
			target, rel, _ := strings.Cut(link, ";")
			if strings.TrimSpace(rel) != `rel="next"` {
				t.Fatalf("Link %q has no rel=next", link)
			}
			next = strings.Trim(strings.TrimSpace(target), "<>")
			if !strings.HasPrefix(next, wantPrefix) {
				t.Fatalf("Link %q is not relative in the client's form %q", next, wantPrefix)
			}
		}
	}
	return tags, pages
}

func TestTagsListPagingAllForms(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	want := harness.TagNames(300)
	reg.PushTags(t, "linuxserver/nginx", want)
	reg.SetPaging(registrytest.PagingLink, 100) // upstream pages of at most 100, like many registries
	rc := startRegcache(t, harness.Config("", harness.Upstream("lscr.io", reg.URL)))

	// No n: regcache gathers upstream's pages and answers once, without a Link.
	reg.ResetCounts()
	r := rc.Do(t, http.MethodGet, "/v2/lscr.io/linuxserver/nginx/tags/list")
	if r.Status != 200 || r.Header.Get("Link") != "" || r.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("full list: %d Link=%q X-Cache=%q", r.Status, r.Header.Get("Link"), r.Header.Get("X-Cache"))
	}
	var all struct{ Tags []string }
	_ = json.Unmarshal(r.Body, &all)
	harness.ExpectEachTagOnce(t, all.Tags, want)
	if n := reg.Count("GET", "tags"); n != 3 {
		t.Fatalf("upstream tag pages = %d, want 3", n)
	}
	r = rc.Do(t, http.MethodGet, "/v2/lscr.io/linuxserver/nginx/tags/list")
	if r.Header.Get("X-Cache") != "HIT" || reg.Count("GET", "tags") != 3 {
		t.Fatalf("second list: X-Cache %q, upstream pages %d", r.Header.Get("X-Cache"), reg.Count("GET", "tags"))
	}

	// Client paging in each form: every tag exactly once, Link in the client's form.
	for _, form := range []struct{ start, prefix string }{
		{"/v2/lscr.io/linuxserver/nginx/tags/list?n=50", "/v2/lscr.io/linuxserver/nginx/tags/list?"},
		{"/v2/linuxserver/nginx/tags/list?n=70&ns=lscr.io", "/v2/linuxserver/nginx/tags/list?"},
		{"/v2/linuxserver/nginx/tags/list?n=1000", "/v2/linuxserver/nginx/tags/list?"},
	} {
		got, pages := followTags(t, rc, form.start, form.prefix)
		harness.ExpectEachTagOnce(t, got, want)
		t.Logf("%s: %d pages", form.start, pages)
	}
	// ns is kept in the Link.
	r = rc.Do(t, http.MethodGet, "/v2/linuxserver/nginx/tags/list?n=70&ns=lscr.io")
	if !strings.Contains(r.Header.Get("Link"), "ns=lscr.io") {
		t.Fatalf("Link %q lost ns", r.Header.Get("Link"))
	}
}

func TestTagsListQuayPagingAndBadInput(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	want := harness.TagNames(300)
	reg.PushTags(t, "org/app", want)
	reg.SetPaging(registrytest.PagingQuay, 100)
	rc := startRegcache(t, harness.Config("", harness.Upstream("quay.io", reg.URL)))

	got, _ := followTags(t, rc, "/v2/quay.io/org/app/tags/list?n=120", "/v2/quay.io/org/app/tags/list?")
	harness.ExpectEachTagOnce(t, got, want)
	got, _ = followTags(t, rc, "/v2/quay.io/org/app/tags/list?n=20000", "/v2/quay.io/org/app/tags/list?") // clamped
	harness.ExpectEachTagOnce(t, got, want)

	r := rc.Do(t, http.MethodGet, "/v2/quay.io/org/app/tags/list?n=0")
	if r.Status != 200 || !strings.Contains(string(r.Body), `"tags":[]`) {
		t.Fatalf("n=0: %d %s", r.Status, r.Body)
	}
	for _, q := range []string{"n=-1", "n=abc", "n=1e3", "last=-bad", "last=" + strings.Repeat("a", 200)} {
		r := rc.Do(t, http.MethodGet, "/v2/quay.io/org/app/tags/list?"+q)
		if r.Status != 400 || !bytes.Contains(r.Body, []byte(`"errors"`)) {
			t.Fatalf("%s: %d %s, want a 400 registry error", q, r.Status, r.Body)
		}
	}
	r = rc.Do(t, http.MethodGet, "/v2/quay.io/org/missing/tags/list")
	if r.Status != 404 || !bytes.Contains(r.Body, []byte("NAME_UNKNOWN")) {
		t.Fatalf("missing repo: %d %s", r.Status, r.Body)
	}
}

func TestTagsListStaleWhenUpstreamFails(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushTags(t, "org/app", harness.TagNames(5))
	rc := startRegcache(t, harness.Config("  tag_ttl: 50ms\n  revalidate_wait: 1s\n", harness.Upstream("quay.io", reg.URL)))
	if r := rc.Do(t, http.MethodGet, "/v2/quay.io/org/app/tags/list"); r.Status != 200 {
		t.Fatalf("warm: %d", r.Status)
	}
	time.Sleep(60 * time.Millisecond)
	reg.SetFault(registrytest.Status(500))
	r := rc.Do(t, http.MethodGet, "/v2/quay.io/org/app/tags/list")
	if r.Status != 200 || r.Header.Get("X-Cache") != "STALE" || !strings.Contains(string(r.Body), "1.004") {
		t.Fatalf("stale tags: %d %q %s", r.Status, r.Header.Get("X-Cache"), r.Body)
	}
}

// An upstream whose Link continues with an opaque last= token (ECR's way): following
// regcache's Links reaches every tag, exactly once, in each routing form, and no Link
// regcache sends carries the token.
func TestTagsListOpaqueContinuationAllForms(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	want := harness.TagNames(300)
	reg.PushTags(t, "team/app", want)
	reg.SetPaging(registrytest.PagingOpaque, 10) // 30 upstream pages for the whole list
	rc := startRegcache(t, harness.Config("", harness.Upstream("ecr.test", reg.URL)))

	for _, form := range []struct{ start, prefix string }{
		{"/v2/ecr.test/team/app/tags/list", "/v2/ecr.test/team/app/tags/list?"},
		{"/v2/ecr.test/team/app/tags/list?n=50", "/v2/ecr.test/team/app/tags/list?"},
		{"/v2/team/app/tags/list?n=70&ns=ecr.test", "/v2/team/app/tags/list?"},
		{"/v2/team/app/tags/list?n=1000", "/v2/team/app/tags/list?"},
	} {
		got, _ := followTags(t, rc, form.start, form.prefix)
		harness.ExpectEachTagOnce(t, got, want)
	}
}

// One listing per tag TTL, however clients slice it: a client request costs at most
// cache.tags_max_pages_per_request upstream pages (20 by default), and walks with four
// n values, in three routing forms, cost upstream the one listing between them.
func TestTagsListOneUpstreamListingPerTTL(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	want := harness.TagNames(1000)
	reg.PushTags(t, "team/app", want)
	reg.SetPaging(registrytest.PagingLink, 10) // 100 upstream pages for the whole list
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	reg.ResetCounts()

	r := rc.Do(t, http.MethodGet, "/v2/reg.test/team/app/tags/list")
	if r.Status != 200 {
		t.Fatalf("first listing: %d %s", r.Status, r.Body)
	}
	if n := reg.Count(http.MethodGet, "tags"); n > 20 {
		t.Fatalf("one tags request without n cost %d upstream pages, want at most 20", n)
	}
	if linkLast(t, r) == "" {
		t.Fatal("an incomplete first answer has no Link to go on from")
	}
	for _, form := range []struct{ start, prefix string }{
		{"/v2/reg.test/team/app/tags/list", "/v2/reg.test/team/app/tags/list?"},
		{"/v2/reg.test/team/app/tags/list?n=100", "/v2/reg.test/team/app/tags/list?"},
		{"/v2/team/app/tags/list?n=150&ns=reg.test", "/v2/team/app/tags/list?"},
		{"/v2/team/app/tags/list?n=250", "/v2/team/app/tags/list?"},
		{"/v2/reg.test/team/app/tags/list?n=400&last=1.123", "/v2/reg.test/team/app/tags/list?"},
	} {
		got, pages := followTags(t, rc, form.start, form.prefix)
		if strings.Contains(form.start, "last=1.123") {
			harness.ExpectEachTagOnce(t, got, want[124:])
		} else {
			harness.ExpectEachTagOnce(t, got, want)
		}
		t.Logf("%s: %d pages, %d upstream pages so far", form.start, pages, reg.Count(http.MethodGet, "tags"))
	}
	if n := reg.Count(http.MethodGet, "tags"); n != 100 {
		t.Fatalf("five walks cost %d upstream pages, want 100 (one listing)", n)
	}

	// At once, on a cold repository: 24 clients walking with four n values share the one
	// listing too (coalesced), and every walk sees every tag once.
	reg.PushTags(t, "team/other", want)
	reg.ResetCounts()
	var wg sync.WaitGroup
	errs := make(chan error, 24)
	for i := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- walkTagsConcurrently(rc, fmt.Sprintf("/v2/reg.test/team/other/tags/list?n=%d", []int{100, 150, 250, 400}[i%4]), len(want))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := reg.Count(http.MethodGet, "tags"); n != 100 {
		t.Fatalf("24 concurrent walks cost %d upstream pages, want 100 (one listing)", n)
	}
}

// walkTagsConcurrently follows Links from start and checks the walk saw want distinct
// tags, in order, each once; it reports rather than fails, for use off the test goroutine.
func walkTagsConcurrently(rc *harness.Instance, start string, want int) error {
	next, prev, count := start, "", 0
	for pages := 0; next != ""; pages++ {
		if pages > 60 {
			return fmt.Errorf("%s: Link never ends", start)
		}
		resp, err := rc.Client.Get(rc.URL + next)
		if err != nil {
			return err
		}
		var body struct{ Tags []string }
		err = json.NewDecoder(resp.Body).Decode(&body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || err != nil {
			return fmt.Errorf("GET %s: %d %v", next, resp.StatusCode, err)
		}
		for _, tag := range body.Tags {
			if tag <= prev {
				return fmt.Errorf("%s: %q after %q", start, tag, prev)
			}
			prev = tag
			count++
		}
		next = ""
		if link := resp.Header.Get("Link"); link != "" {
			target, _, _ := strings.Cut(link, ";")
			next = strings.Trim(strings.TrimSpace(target), "<>")
		}
	}
	if count != want {
		return fmt.Errorf("%s: %d tags, want %d", start, count, want)
	}
	return nil
}

// A 429 earned by a tags listing holds tags listings back, not manifests, unless upstream
// says the limit is the account's or the address's (RateLimit-Remaining: 0).
func TestTagsList429HoldsTagsOnly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, remaining string
		holdsManifests  bool
	}{
		{"ECR-like, no account-wide evidence", "", false},
		{"some remaining", "40;w=21600", false},
		{"Docker Hub, nothing remaining", "0;w=21600", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := registrytest.New(t, registrytest.Bearer)
			const repo = "limited/app"
			p := reg.PushImage(t, repo, "v1", types.DockerManifestSchema2)
			rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
			var tags429 registrytest.Fault = func(w http.ResponseWriter, req *http.Request) bool {
				if !strings.HasSuffix(req.URL.Path, "/tags/list") {
					return false
				}
				if tc.remaining != "" {
					w.Header().Set("RateLimit-Remaining", tc.remaining)
				}
				return registrytest.RateLimited(time.Hour)(w, req)
			}
			reg.SetFault(tags429)
			harness.ExpectRateLimited(t, "tags listing upstream limits", rc.Do(t, "GET", "/v2/reg.test/"+repo+"/tags/list"), "GET", 3600)
			reg.SetFault(nil)
			reg.ResetCounts()
			harness.ExpectRateLimited(t, "tags listing during the hold", rc.Do(t, "GET", "/v2/reg.test/"+repo+"/tags/list?n=5"), "GET", 3600)
			if n := reg.Count(http.MethodGet, "tags"); n != 0 {
				t.Fatalf("%d tags requests reached upstream during the tags hold", n)
			}
			r := rc.Do(t, "GET", "/v2/reg.test/"+repo+"/manifests/v1")
			if tc.holdsManifests {
				harness.ExpectRateLimited(t, "manifest during an account-wide hold", r, "GET", 3600)
				if n := reg.Total(); n != 0 {
					t.Fatalf("%d requests reached upstream during an account-wide hold", n)
				}
				return
			}
			harness.ExpectManifest(t, "uncached manifest during a tags hold", r, "MISS", p, "GET")
		})
	}
}

// A hostile upstream sending a huge "tag" on every page, and a Link that never ends:
// nothing outside the tag grammar reaches a client (dropped, and counted), and the whole
// listing stops at cache.tags_max_bytes (8 MiB by default), marked truncated.
func TestTagsListHostileUpstreamBounded(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.DockerManifestSchema2)
	huge := strings.Repeat("a", 256<<10)
	var served atomic.Int64
	reg.SetFault(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasSuffix(req.URL.Path, "/tags/list") {
			return false
		}
		i, _ := strconv.Atoi(strings.TrimPrefix(req.URL.Query().Get("last"), "v"))
		body := fmt.Sprintf(`{"name":"team/app","tags":["%s","v%06d","<script>"]}`, huge, i+1)
		w.Header().Set("Link", fmt.Sprintf(`</v2/team/app/tags/list?last=v%06d>; rel="next"`, i+1))
		w.Header().Set("Content-Type", "application/json")
		served.Add(int64(len(body)))
		_, _ = w.Write([]byte(body))
		return true
	})
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	next, bodies, truncated := "/v2/reg.test/team/app/tags/list", 0, false
	var got []string
	for pages := 0; next != ""; pages++ {
		if pages > 40 {
			t.Fatalf("Link never ends; upstream served %d bytes", served.Load())
		}
		r := rc.Do(t, http.MethodGet, next)
		if r.Status != 200 {
			t.Fatalf("GET %s: %d %.300s", next, r.Status, r.Body)
		}
		bodies += len(r.Body)
		var body struct{ Tags []string }
		if err := json.Unmarshal(r.Body, &body); err != nil {
			t.Fatal(err)
		}
		for _, tag := range body.Tags {
			if !upstream.ValidTag(tag) {
				t.Fatalf("a tag outside the grammar reached the client: %.40q (%d bytes)", tag, len(tag))
			}
		}
		got = append(got, body.Tags...)
		truncated = r.Header.Get("X-Regcache-Truncated") != ""
		next = ""
		if last := linkLast(t, r); r.Header.Get("Link") != "" {
			next = "/v2/reg.test/team/app/tags/list?last=" + last
		}
	}
	if !truncated {
		t.Fatal("the last answer of a listing cut at its bound is not marked X-Regcache-Truncated")
	}
	if s := served.Load(); s > 9<<20 {
		t.Fatalf("upstream served %d bytes for one listing, want at most cache.tags_max_bytes (8 MiB) and a page", s)
	}
	if bodies > 64<<10 || len(got) == 0 {
		t.Fatalf("clients got %d bytes, %d tags", bodies, len(got))
	}
	if d := rc.Metric(t, "regcache_tags_dropped_total"); d < float64(2*len(got)) {
		t.Fatalf("regcache_tags_dropped_total = %v, want at least %d", d, 2*len(got))
	}
}

// Real clients page through an opaque-token upstream via regcache's Links.
func TestTagsListCLIsFollowLinks(t *testing.T) {
	crane := harness.Tool(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
	regctl := harness.Tool(t, "regctl", "go install github.com/regclient/regclient/cmd/regctl@v0.11.7")
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	want := harness.TagNames(600)
	reg.PushTags(t, "team/app", want)
	reg.SetPaging(registrytest.PagingOpaque, 10) // 60 pages: three client requests at least
	rc := startRegcache(t, harness.Config("", harness.Upstream("ecr.test", reg.URL)))
	host := strings.TrimPrefix(rc.URL, "http://")
	harness.ExpectEachTagOnce(t, strings.Fields(harness.RunTool(t, nil, crane, "ls", "--insecure", host+"/ecr.test/team/app")), want)
	env := []string{"HOME=" + t.TempDir()}
	harness.RunTool(t, env, regctl, "registry", "set", host, "--tls", "disabled")
	harness.ExpectEachTagOnce(t, strings.Fields(harness.RunTool(t, env, regctl, "tag", "ls", host+"/ecr.test/team/app")), want)
}
