package main

// End-to-end tests of what a lookup costs (docs/design.md, "What a lookup costs upstream"): real go-containerregistry
// registries on 127.0.0.1 behind regcache, with every manifest request that reaches
// upstream counted and recorded. Helpers in this file are prefixed "ce".

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// ceKinds are the four manifest kinds every update checker meets.
var ceKinds = []struct {
	name string
	mt   types.MediaType
	push func(t testing.TB, reg *registrytest.Registry, repo, tag string) registrytest.Pushed
}{
	{"oci-index", types.OCIImageIndex, func(t testing.TB, reg *registrytest.Registry, repo, tag string) registrytest.Pushed {
		return reg.PushIndex(t, repo, tag, types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	}},
	{"docker-list", types.DockerManifestList, func(t testing.TB, reg *registrytest.Registry, repo, tag string) registrytest.Pushed {
		return reg.PushIndex(t, repo, tag, types.DockerManifestList, "linux/amd64", "linux/arm/v7")
	}},
	{"docker-v2", types.DockerManifestSchema2, func(t testing.TB, reg *registrytest.Registry, repo, tag string) registrytest.Pushed {
		return reg.PushImage(t, repo, tag, types.DockerManifestSchema2)
	}},
	{"oci-manifest", types.OCIManifestSchema1, func(t testing.TB, reg *registrytest.Registry, repo, tag string) registrytest.Pushed {
		return reg.PushImage(t, repo, tag, types.OCIManifestSchema1)
	}},
}

// ceWatch wraps a registry's fault hook: it records every manifest request that reaches
// upstream ("HEAD /v2/repo/manifests/ref") and then hands the request to the fault set
// with set, if any.
type ceWatch struct {
	reg   *registrytest.Registry
	mu    sync.Mutex
	reqs  []string
	fault atomic.Pointer[registrytest.Fault]
}

func ceWatchRegistry(reg *registrytest.Registry) *ceWatch {
	w := &ceWatch{reg: reg}
	reg.SetFault(func(rw http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.mu.Lock()
			w.reqs = append(w.reqs, r.Method+" "+r.URL.Path)
			w.mu.Unlock()
		}
		if f := w.fault.Load(); f != nil {
			return (*f)(rw, r)
		}
		return false
	})
	return w
}

// set installs f behind the recorder (nil removes it).
func (w *ceWatch) set(f registrytest.Fault) {
	if f == nil {
		w.fault.Store(nil)
		return
	}
	w.fault.Store(&f)
}

// reset forgets recorded requests and zeroes the registry's counters.
func (w *ceWatch) reset() {
	w.mu.Lock()
	w.reqs = nil
	w.mu.Unlock()
	w.reg.ResetCounts()
}

func (w *ceWatch) requests() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.reqs...)
}

// expectUpstream checks that exactly want (in order) reached upstream since the last
// reset, and that the registry's own counters agree.
func (w *ceWatch) expectUpstream(t testing.TB, what string, want ...string) {
	t.Helper()
	got := w.requests()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: upstream manifest requests %q, want %q", what, got, want)
	}
	var gets, heads int
	for _, r := range want {
		if strings.HasPrefix(r, "GET ") {
			gets++
		} else {
			heads++
		}
	}
	if g, h := w.reg.Count("GET", "manifest"), w.reg.Count("HEAD", "manifest"); g != gets || h != heads {
		t.Fatalf("%s: upstream counted GET %d HEAD %d, want GET %d HEAD %d", what, g, h, gets, heads)
	}
}

// ceManifests is a manifest request line as upstream sees it.
func ceManifests(method, repo, ref string) string {
	return method + " /v2/" + repo + "/manifests/" + ref
}

// ceExpect checks a successful manifest answer against what upstream holds.
func ceExpect(t testing.TB, what string, r harness.Response, xcache string, p registrytest.Pushed, method string) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("%s: status %d, want 200: %s", what, r.Status, r.Body)
	}
	if got := r.Header.Get("Docker-Content-Digest"); got != p.Digest {
		t.Fatalf("%s: Docker-Content-Digest %s, want %s", what, got, p.Digest)
	}
	if got := r.Header.Get("Content-Type"); got != p.MediaType {
		t.Fatalf("%s: Content-Type %q, want %q", what, got, p.MediaType)
	}
	if got := r.Header.Get("Content-Length"); got != strconv.Itoa(len(p.Body)) {
		t.Fatalf("%s: Content-Length %q, want %d", what, got, len(p.Body))
	}
	if xcache != "" && r.Header.Get("X-Cache") != xcache {
		t.Fatalf("%s: X-Cache %q, want %q", what, r.Header.Get("X-Cache"), xcache)
	}
	if method == http.MethodGet && string(r.Body) != string(p.Body) {
		t.Fatalf("%s: body (%d bytes) differs from upstream's (%d bytes)", what, len(r.Body), len(p.Body))
	}
	if method == http.MethodHead && len(r.Body) != 0 {
		t.Fatalf("%s: HEAD answered a body", what)
	}
}

// ceError checks a registry error answer and returns its code ("" for HEAD, which has
// no body).
func ceError(t testing.TB, what string, r harness.Response, method string, statuses ...int) string {
	t.Helper()
	if !slices.Contains(statuses, r.Status) {
		t.Fatalf("%s: status %d, want one of %v: %s", what, r.Status, statuses, r.Body)
	}
	if r.Header.Get("Docker-Content-Digest") != "" {
		t.Fatalf("%s: an error answer carries Docker-Content-Digest %s", what, r.Header.Get("Docker-Content-Digest"))
	}
	if method == http.MethodHead {
		return ""
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s: error Content-Type %q", what, ct)
	}
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil || len(body.Errors) == 0 || body.Errors[0].Code == "" {
		t.Fatalf("%s: not a registry error body: %q", what, r.Body)
	}
	return body.Errors[0].Code
}

// ceTimed is do with the time the answer took.
func ceTimed(t testing.TB, in *harness.Instance, method, path string) (harness.Response, time.Duration) {
	t.Helper()
	start := time.Now()
	r := in.Do(t, method, path)
	return r, time.Since(start)
}

// ceDirect asks the registry itself (with a token, which NoAuth registries ignore), for
// the reference answer regcache must reproduce.
func ceDirect(t testing.TB, reg *registrytest.Registry, method, repo, ref string) harness.Response {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	treq, _ := http.NewRequest(http.MethodGet, reg.URL+"/token?scope=repository:"+repo+":pull", nil)
	treq.SetBasicAuth(reg.Username, reg.Password)
	tresp, err := c.Do(treq)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token string }
	_ = json.NewDecoder(tresp.Body).Decode(&tok)
	tresp.Body.Close()
	req, _ := http.NewRequest(method, reg.URL+"/v2/"+repo+"/manifests/"+ref, nil)
	req.Header.Set("Accept", harness.AcceptAll)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("direct %s %s:%s: %s", method, repo, ref, resp.Status)
	}
	return harness.Response{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// 1. Four manifest kinds, by tag and by digest, GET and HEAD, through all three routing
// forms: digest, type, length and body are upstream's, byte for byte.
func TestCacheE2EFourKindsByteForByte(t *testing.T) {
	t.Parallel()
	regDef := registrytest.New(t, registrytest.Bearer)
	regPre := registrytest.New(t, registrytest.NoAuth)
	regNS := registrytest.New(t, registrytest.BearerBasic)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("def.test", regDef.URL),
		harness.Upstream("prefix.test", regPre.URL),
		harness.Upstream("ns.test", regNS.URL, "credentials:", "  username: "+regNS.Username, "  password: "+regNS.Password)))

	forms := []struct {
		name string
		reg  *registrytest.Registry
		path func(repo, ref string) string
		ops  []string // method and "tag" or "digest", in the order asked: each form starts cold differently
	}{
		{"default upstream", regDef, func(repo, ref string) string { return "/v2/" + repo + "/manifests/" + ref },
			[]string{"HEAD digest", "GET digest", "HEAD tag", "GET tag"}},
		{"path prefix", regPre, func(repo, ref string) string { return "/v2/prefix.test/" + repo + "/manifests/" + ref },
			[]string{"GET tag", "HEAD tag", "GET digest", "HEAD digest"}},
		{"containerd ns", regNS, func(repo, ref string) string { return "/v2/" + repo + "/manifests/" + ref + "?ns=ns.test" },
			[]string{"HEAD tag", "GET tag", "HEAD digest", "GET digest"}},
	}
	// The same names hold different random content in each registry, so a request routed
	// to the wrong upstream cannot answer the right digest.
	pushed := map[string]registrytest.Pushed{}
	for _, f := range forms {
		for _, k := range ceKinds {
			pushed[f.name+k.name] = k.push(t, f.reg, "kinds/"+k.name, "v1")
		}
	}
	for _, f := range forms {
		for _, k := range ceKinds {
			repo := "kinds/" + k.name
			p := pushed[f.name+k.name]
			if p.MediaType != string(k.mt) {
				t.Fatalf("seeded %s as %s", k.name, p.MediaType)
			}
			// Upstream's own answers are the reference.
			upGet := ceDirect(t, f.reg, http.MethodGet, repo, "v1")
			upHead := ceDirect(t, f.reg, http.MethodHead, repo, "v1")
			if string(upGet.Body) != string(p.Body) || upHead.Header.Get("Docker-Content-Digest") != p.Digest ||
				upHead.Header.Get("Content-Type") != p.MediaType || upHead.Header.Get("Content-Length") != strconv.Itoa(len(p.Body)) {
				t.Fatalf("%s: upstream itself answers %v", k.name, upHead.Header)
			}
			for _, op := range f.ops {
				method, by, _ := strings.Cut(op, " ")
				ref := "v1"
				if by == "digest" {
					ref = p.Digest
				}
				what := f.name + " " + k.name + " " + op
				r := rc.Do(t, method, f.path(repo, ref), "Accept", harness.AcceptAll)
				ceExpect(t, what, r, "", p, method)
				for _, h := range []string{"Docker-Content-Digest", "Content-Type", "Content-Length"} {
					if r.Header.Get(h) != upHead.Header.Get(h) {
						t.Fatalf("%s: %s %q, upstream says %q", what, h, r.Header.Get(h), upHead.Header.Get(h))
					}
				}
				if method == http.MethodGet && string(r.Body) != string(upGet.Body) {
					t.Fatalf("%s: body differs from upstream's GET", what)
				}
			}
		}
	}
}

// 2. The cost table's rows, one by one, with the exact upstream requests each costs.
func TestCacheE2ECostTable(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "team/app"
	a := reg.PushImage(t, repo, "a", types.OCIManifestSchema1)
	b := reg.PushIndex(t, repo, "b", types.OCIImageIndex, "linux/amd64")
	c := reg.PushImage(t, repo, "c", types.DockerManifestSchema2)
	const ttl = 1500 * time.Millisecond
	rc := startRegcache(t, harness.Config("  tag_ttl: 1500ms\n", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)

	step := func(what, method, ref string, p registrytest.Pushed, xcache string, wantUp ...string) {
		t.Helper()
		up.reset()
		r := rc.Do(t, method, "/v2/reg.test/"+repo+"/manifests/"+ref)
		ceExpect(t, what, r, xcache, p, method)
		up.expectUpstream(t, what, wantUp...)
	}
	step("HEAD tag, cold", "HEAD", "a", a, "MISS", ceManifests("HEAD", repo, "a"))
	step("HEAD tag, fresh", "HEAD", "a", a, "HIT")
	step("GET tag, only HEAD before", "GET", "a", a, "MISS", ceManifests("GET", repo, a.Digest))
	step("GET tag, fresh with body", "GET", "a", a, "HIT")

	step("GET tag, cold", "GET", "b", b, "MISS", ceManifests("GET", repo, "b"))
	step("GET tag again", "GET", "b", b, "HIT")
	step("HEAD tag after GET", "HEAD", "b", b, "HIT")

	for _, p := range []registrytest.Pushed{a, b} {
		step("GET digest, cached", "GET", p.Digest, p, "HIT")
		step("HEAD digest, cached", "HEAD", p.Digest, p, "HIT")
	}

	step("HEAD digest, cold", "HEAD", c.Digest, c, "MISS", ceManifests("HEAD", repo, c.Digest))
	step("HEAD digest, metadata cached", "HEAD", c.Digest, c, "HIT")
	step("GET digest, only HEAD before", "GET", c.Digest, c, "MISS", ceManifests("GET", repo, c.Digest))
	step("GET digest, cached", "GET", c.Digest, c, "HIT")

	// "None, ever": once every tag has expired and upstream answers nothing but 500,
	// content-addressed answers still come from memory without a single upstream request.
	time.Sleep(ttl + 200*time.Millisecond)
	up.set(registrytest.OnManifests(registrytest.Status(http.StatusInternalServerError)))
	for _, p := range []registrytest.Pushed{a, b, c} {
		step("GET digest after tag_ttl, upstream down", "GET", p.Digest, p, "HIT")
		step("HEAD digest after tag_ttl, upstream down", "HEAD", p.Digest, p, "HIT")
	}
	// While a tag, by contrast, is stale now and costs a revalidation attempt.
	step("HEAD tag after tag_ttl, upstream down", "HEAD", "a", a, "STALE", ceManifests("HEAD", repo, "a"))
}

// ceBurstResult is one client's view of a burst.
type ceBurstResult struct {
	status int
	digest string
	xcache string
	body   []byte
	err    error
}

// ceBurst sends n identical requests at once from n goroutines sharing in's client.
func ceBurst(in *harness.Instance, method, path string, n int) []ceBurstResult {
	out := make([]ceBurstResult, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func(res *ceBurstResult) {
			defer wg.Done()
			<-start
			req, err := http.NewRequest(method, in.URL+path, nil)
			if err != nil {
				res.err = err
				return
			}
			resp, err := in.Client.Do(req)
			if err != nil {
				res.err = err
				return
			}
			defer resp.Body.Close()
			res.body, res.err = io.ReadAll(resp.Body)
			res.status = resp.StatusCode
			res.digest = resp.Header.Get("Docker-Content-Digest")
			res.xcache = resp.Header.Get("X-Cache")
		}(&out[i])
	}
	close(start)
	wg.Wait()
	return out
}

// 3. 200 clients at once on a cold tag cost exactly one upstream manifest request.
func TestCacheE2ECoalescedBurst(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	headTag := reg.PushIndex(t, "burst/app", "for-head", types.DockerManifestList, "linux/amd64", "linux/arm64/v8")
	getTag := reg.PushImage(t, "burst/app", "for-get", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	const n = 200
	for _, tc := range []struct {
		method, tag string
		p           registrytest.Pushed
	}{
		{http.MethodHead, "for-head", headTag},
		{http.MethodGet, "for-get", getTag},
	} {
		reg.ResetCounts()
		res := ceBurst(rc, tc.method, "/v2/reg.test/burst/app/manifests/"+tc.tag, n)
		misses := 0
		for i, r := range res {
			if r.err != nil {
				t.Fatalf("%s client %d: %v", tc.method, i, r.err)
			}
			if r.status != http.StatusOK || r.digest != tc.p.Digest {
				t.Fatalf("%s client %d: status %d digest %s, want 200 %s", tc.method, i, r.status, r.digest, tc.p.Digest)
			}
			if tc.method == http.MethodGet && string(r.body) != string(tc.p.Body) {
				t.Fatalf("GET client %d: body differs from upstream's", i)
			}
			switch r.xcache {
			case "MISS":
				misses++
			case "HIT": // a client that arrived after the one upstream answer was stored
			default:
				t.Fatalf("%s client %d: X-Cache %q", tc.method, i, r.xcache)
			}
		}
		if misses == 0 {
			t.Fatalf("%s burst: no client saw the miss", tc.method)
		}
		gets, heads := reg.Count("GET", "manifest"), reg.Count("HEAD", "manifest")
		wantGets, wantHeads := 0, 1
		if tc.method == http.MethodGet {
			wantGets, wantHeads = 1, 0
		}
		if gets != wantGets || heads != wantHeads {
			t.Fatalf("%s burst of %d: upstream saw GET %d HEAD %d manifest requests, want GET %d HEAD %d",
				tc.method, n, gets, heads, wantGets, wantHeads)
		}
		if tok := reg.Count("GET", "token"); tok > 1 {
			t.Fatalf("%s burst: %d token exchanges", tc.method, tok)
		}
		t.Logf("%s burst: %d MISS, %d HIT; upstream: %d manifest, %d token, %d total requests",
			tc.method, misses, n-misses, gets+heads, reg.Count("GET", "token"), reg.Total())
	}
}

// 4. After tag_ttl an unchanged tag costs one HEAD (REVALIDATED, body from memory); a
// retagged one is seen (MISS, one HEAD plus one GET by digest for a GET client).
func TestCacheE2ETagTTLRevalidateAndRetag(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "ttl/app"
	g1 := reg.PushImage(t, repo, "for-get", types.OCIManifestSchema1)
	h1 := reg.PushIndex(t, repo, "for-head", types.OCIImageIndex, "linux/amd64")
	const ttl = 300 * time.Millisecond
	rc := startRegcache(t, harness.Config("  tag_ttl: 300ms\n", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	ceExpect(t, "warm GET", rc.Do(t, "GET", path("for-get")), "MISS", g1, "GET")
	ceExpect(t, "warm HEAD", rc.Do(t, "HEAD", path("for-head")), "MISS", h1, "HEAD")
	time.Sleep(ttl + 100*time.Millisecond)

	up.reset()
	ceExpect(t, "GET after tag_ttl, unchanged", rc.Do(t, "GET", path("for-get")), "REVALIDATED", g1, "GET")
	up.expectUpstream(t, "GET after tag_ttl, unchanged", ceManifests("HEAD", repo, "for-get"))
	up.reset()
	ceExpect(t, "HEAD after tag_ttl, unchanged", rc.Do(t, "HEAD", path("for-head")), "REVALIDATED", h1, "HEAD")
	up.expectUpstream(t, "HEAD after tag_ttl, unchanged", ceManifests("HEAD", repo, "for-head"))

	// Retag both upstream: a different manifest (of another kind, even) under the same tag.
	g2 := reg.PushIndex(t, repo, "for-get", types.DockerManifestList, "linux/amd64")
	h2 := reg.PushImage(t, repo, "for-head", types.DockerManifestSchema2)
	time.Sleep(ttl + 100*time.Millisecond)

	up.reset()
	ceExpect(t, "GET after retag and tag_ttl", rc.Do(t, "GET", path("for-get")), "MISS", g2, "GET")
	up.expectUpstream(t, "GET after retag", ceManifests("HEAD", repo, "for-get"), ceManifests("GET", repo, g2.Digest))
	up.reset()
	ceExpect(t, "HEAD after retag and tag_ttl", rc.Do(t, "HEAD", path("for-head")), "MISS", h2, "HEAD")
	up.expectUpstream(t, "HEAD after retag", ceManifests("HEAD", repo, "for-head"))

	// The new manifest is cached by digest; the old ones are still there too (immutable).
	up.reset()
	ceExpect(t, "new digest cached", rc.Do(t, "GET", path(g2.Digest)), "HIT", g2, "GET")
	ceExpect(t, "old digest still cached", rc.Do(t, "GET", path(g1.Digest)), "HIT", g1, "GET")
	up.expectUpstream(t, "digests after retag")
}

// 5. Stale-if-error: with an expired tag cached, upstream 500, 429 and dropped
// connections are covered by the stale answer; with nothing cached they are registry
// errors; without the fault regcache is fresh again by itself.
func TestCacheE2EStaleIfError(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "stale/app"
	warm := reg.PushIndex(t, repo, "warm", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	cold := reg.PushImage(t, repo, "cold", types.DockerManifestSchema2)
	const ttl = 300 * time.Millisecond
	rc := startRegcache(t, harness.Config("  tag_ttl: 300ms\n", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	ceExpect(t, "warm", rc.Do(t, "GET", path("warm")), "MISS", warm, "GET")
	time.Sleep(ttl + 100*time.Millisecond)

	for _, tc := range []struct {
		name       string
		fault      registrytest.Fault
		statuses   []int
		code       string
		retryAfter string
	}{
		{"500", registrytest.Status(http.StatusInternalServerError), []int{502}, "UNAVAILABLE", ""},
		{"connection closed", registrytest.CloseConnection(), []int{502, 503}, "UNAVAILABLE", ""},
		// Last: a 429 holds every request back until its Retry-After (upstream/ratelimit.go).
		{"429", registrytest.RateLimited(2 * time.Second), []int{429}, "TOOMANYREQUESTS", "2"},
	} {
		up.set(registrytest.OnManifests(tc.fault))
		up.reset()
		for _, m := range []string{"GET", "HEAD"} {
			ceExpect(t, tc.name+": stale "+m, rc.Do(t, m, path("warm")), "STALE", warm, m)
		}
		if reg.Count("GET", "manifest")+reg.Count("HEAD", "manifest") == 0 {
			t.Fatalf("%s: the stale answers were given without trying upstream", tc.name)
		}
		for _, m := range []string{"GET", "HEAD"} {
			r := rc.Do(t, m, path("cold"))
			code := ceError(t, tc.name+": cold "+m, r, m, tc.statuses...)
			if m == "GET" && code != tc.code {
				t.Fatalf("%s: cold GET code %s, want %s", tc.name, code, tc.code)
			}
			if got := r.Header.Get("Retry-After"); got != tc.retryAfter {
				t.Fatalf("%s: cold %s Retry-After %q, want %q", tc.name, m, got, tc.retryAfter)
			}
		}
	}

	// Fault gone: after tag_ttl and the 429's Retry-After the next answer is a fresh one,
	// with no operator action.
	up.set(nil)
	time.Sleep(max(ttl, 2*time.Second) + 100*time.Millisecond)
	up.reset()
	ceExpect(t, "recovered GET", rc.Do(t, "GET", path("warm")), "REVALIDATED", warm, "GET")
	up.expectUpstream(t, "recovered GET", ceManifests("HEAD", repo, "warm"))
	r := rc.Do(t, "HEAD", path("warm"))
	if x := r.Header.Get("X-Cache"); x != "HIT" && x != "REVALIDATED" {
		t.Fatalf("after recovery HEAD X-Cache %q", x)
	}
	ceExpect(t, "recovered HEAD", r, "", warm, "HEAD")
	ceExpect(t, "recovered cold GET", rc.Do(t, "GET", path("cold")), "MISS", cold, "GET")
}

// 6. A slow upstream holds a client with a stale answer at most revalidate_wait; the
// revalidation goes on in the background and refreshes the cache.
func TestCacheE2ESlowUpstreamServesStaleAndRefreshesInBackground(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "slow/app"
	old := reg.PushImage(t, repo, "t", types.OCIManifestSchema1)
	const ttl, delay = 500 * time.Millisecond, 1500 * time.Millisecond
	rc := startRegcache(t, harness.Config("  tag_ttl: 500ms\n  revalidate_wait: 200ms\n", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)
	path := "/v2/reg.test/" + repo + "/manifests/t"

	ceExpect(t, "warm", rc.Do(t, "GET", path), "MISS", old, "GET")
	// Retag upstream, so that what the background revalidation stores is recognisable.
	cur := reg.PushImage(t, repo, "t", types.DockerManifestSchema2)
	time.Sleep(ttl + 100*time.Millisecond)

	up.set(registrytest.OnManifests(registrytest.Delay(delay)))
	up.reset()
	start := time.Now()
	r, took := ceTimed(t, rc, "GET", path)
	ceExpect(t, "stale GET while upstream is slow", r, "STALE", old, "GET")
	if took > delay*2/3 {
		t.Fatalf("stale GET took %v; revalidate_wait is 200ms and upstream takes %v", took, delay)
	}
	r, took = ceTimed(t, rc, "HEAD", path)
	ceExpect(t, "second stale HEAD while upstream is slow", r, "STALE", old, "HEAD")
	if took > delay*2/3 {
		t.Fatalf("stale HEAD took %v", took)
	}
	if time.Since(start) < delay*4/5 {
		// Still inside the first revalidation: the second client joined it.
		up.expectUpstream(t, "two stale clients", ceManifests("HEAD", repo, "t"))
	}
	// Later requests are fast again; the one in flight keeps its delay.
	up.set(nil)

	// Until the slow HEAD lands, clients keep getting the stale answer (quickly). The first
	// answer with the retagged digest comes without any new upstream request: the background
	// revalidation found and stored it. (A client that happened to be waiting on it when it
	// landed is told MISS: the answer came from upstream while it waited.)
	time.Sleep(time.Until(start.Add(delay + 100*time.Millisecond)))
	for deadline := time.Now().Add(10 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatalf("background revalidation never refreshed the cache; upstream saw %q", up.requests())
		}
		r, took := ceTimed(t, rc, "HEAD", path)
		if took > delay*2/3 {
			t.Fatalf("HEAD while waiting for the background revalidation took %v", took)
		}
		if r.Header.Get("X-Cache") == "STALE" {
			ceExpect(t, "stale HEAD", r, "STALE", old, "HEAD")
			time.Sleep(50 * time.Millisecond)
			continue
		}
		ceExpect(t, "first answer after the background revalidation", r, "", cur, "HEAD")
		want := []string{ceManifests("HEAD", repo, "t")}
		switch x := r.Header.Get("X-Cache"); x {
		case "HIT", "MISS":
		case "REVALIDATED": // a loaded machine let the refreshed entry expire already
			want = append(want, ceManifests("HEAD", repo, "t"))
		default:
			t.Fatalf("first answer after the background revalidation: X-Cache %q", x)
		}
		up.expectUpstream(t, "background revalidation", want...)
		if since := time.Since(start); since < delay*9/10 {
			t.Fatalf("refreshed after %v, before upstream could have answered", since)
		}
		break
	}
	r, took = ceTimed(t, rc, "HEAD", path)
	if x := r.Header.Get("X-Cache"); x != "HIT" && x != "REVALIDATED" {
		t.Fatalf("after the background revalidation: X-Cache %q, want HIT or REVALIDATED", x)
	}
	ceExpect(t, "after the background revalidation", r, "", cur, "HEAD")
	if took > delay*2/3 {
		t.Fatalf("HEAD after the background revalidation took %v", took)
	}
	ceExpect(t, "GET after refresh", rc.Do(t, "GET", path), "", cur, "GET")
}

// 7. An upstream whose body does not match the digest it claims (or the digest asked
// for) is refused with MANIFEST_INVALID, and nothing of it is cached.
func TestCacheE2ELyingUpstream(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "lie/app"
	truth := reg.PushImage(t, repo, "t", types.OCIManifestSchema1)
	byDigest := reg.PushImage(t, repo, "d", types.DockerManifestSchema2)
	other := reg.PushImage(t, "lie/other", "x", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	// By tag: the body is another manifest, the header claims the real digest.
	up.set(registrytest.OnManifests(registrytest.Serve(truth.MediaType, truth.Digest, other.Body)))
	for i := 1; i <= 2; i++ {
		up.reset()
		r := rc.Do(t, "GET", path("t"))
		if code := ceError(t, "lying GET by tag", r, "GET", 502); code != "MANIFEST_INVALID" {
			t.Fatalf("lying GET by tag: code %s", code)
		}
		// Nothing cached, nothing remembered: every attempt asks upstream again.
		up.expectUpstream(t, "lying GET by tag #"+strconv.Itoa(i), ceManifests("GET", repo, "t"))
	}
	up.set(nil)
	up.reset()
	ceExpect(t, "GET by tag after the lie", rc.Do(t, "GET", path("t")), "MISS", truth, "GET")
	up.expectUpstream(t, "GET by tag after the lie", ceManifests("GET", repo, "t"))
	// Nor was the lying body kept under its own digest: this repository upstream does not
	// have it, so the answer must come from upstream, and be a 404.
	up.reset()
	ceError(t, "lied-about digest", rc.Do(t, "GET", path(other.Digest)), "GET", 404)
	up.expectUpstream(t, "lied-about digest", ceManifests("GET", repo, other.Digest))

	// By digest: upstream answers another body, claiming the digest asked for, or claiming
	// the other body's true digest, or (HEAD) claiming another digest outright.
	for _, tc := range []struct {
		name, method string
		fault        registrytest.Fault
	}{
		{"GET, claims the asked digest", "GET", registrytest.Serve(byDigest.MediaType, byDigest.Digest, other.Body)},
		{"GET, claims the body's digest", "GET", registrytest.Serve(other.MediaType, other.Digest, other.Body)},
		{"GET, claims nothing", "GET", registrytest.Serve(other.MediaType, "", other.Body)},
		{"HEAD, claims another digest", "HEAD", registrytest.Serve(other.MediaType, other.Digest, other.Body)},
	} {
		up.set(registrytest.OnManifests(tc.fault))
		up.reset()
		r := rc.Do(t, tc.method, path(byDigest.Digest))
		if code := ceError(t, "by digest: "+tc.name, r, tc.method, 502); tc.method == "GET" && code != "MANIFEST_INVALID" {
			t.Fatalf("by digest, %s: code %s", tc.name, code)
		}
		up.expectUpstream(t, "by digest: "+tc.name, ceManifests(tc.method, repo, byDigest.Digest))
	}
	up.set(nil)
	up.reset()
	ceExpect(t, "GET by digest after the lies", rc.Do(t, "GET", path(byDigest.Digest)), "MISS", byDigest, "GET")
	up.expectUpstream(t, "GET by digest after the lies", ceManifests("GET", repo, byDigest.Digest))
}

// 8. A manifest over the 4 MiB limit is refused, with or without Content-Length, and
// nothing of it is cached.
func TestCacheE2EOversizedManifest(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "big/app"
	truth := reg.PushImage(t, repo, "t", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	big := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":"` +
		strings.Repeat("a", 6<<20) + `"}}`)
	sum := sha256.Sum256(big)
	bigDigest := "sha256:" + hex.EncodeToString(sum[:])
	const oci = "application/vnd.oci.image.manifest.v1+json"
	chunked := func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", oci)
		w.Header().Set("Docker-Content-Digest", bigDigest)
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			for off := 0; off < len(big); off += 64 << 10 {
				if _, err := w.Write(big[off:min(off+64<<10, len(big))]); err != nil {
					break
				}
				w.(http.Flusher).Flush() // no Content-Length: chunked
			}
		}
		return true
	}
	for _, tc := range []struct {
		name  string
		fault registrytest.Fault
	}{
		{"with Content-Length", registrytest.Serve(oci, bigDigest, big)},
		{"chunked", chunked},
	} {
		up.set(registrytest.OnManifests(tc.fault))
		for _, req := range []struct{ method, ref string }{{"GET", "t"}, {"GET", bigDigest}, {"HEAD", bigDigest}} {
			if tc.name == "chunked" && req.method == "HEAD" {
				continue // without a length a HEAD says nothing about size; the GET fallback is covered above
			}
			what := tc.name + ": " + req.method + " " + req.ref
			up.reset()
			r := rc.Do(t, req.method, path(req.ref))
			if code := ceError(t, what, r, req.method, 502); req.method == "GET" && code != "MANIFEST_INVALID" {
				t.Fatalf("%s: code %s", what, code)
			}
			up.expectUpstream(t, what, ceManifests(req.method, repo, req.ref))
		}
	}
	// Nothing was cached: the tag resolves to the real manifest, and the big digest is
	// asked upstream again (which, honest now, does not have it).
	up.set(nil)
	up.reset()
	ceExpect(t, "GET after the oversized answers", rc.Do(t, "GET", path("t")), "MISS", truth, "GET")
	r := rc.Do(t, "GET", path(bigDigest))
	if code := ceError(t, "big digest after the fault", r, "GET", 404); code != "MANIFEST_UNKNOWN" {
		t.Fatalf("big digest after the fault: code %s", code)
	}
	up.expectUpstream(t, "after the oversized answers", ceManifests("GET", repo, "t"), ceManifests("GET", repo, bigDigest))
}

// 9. Upstream's 404 is remembered for negative_ttl, then asked again; an upstream that
// refuses our credentials for a manifest is 403 DENIED (its token endpoint refusing
// configured credentials is 502 UNAVAILABLE, TestCacheE2EDenied).
func TestCacheE2ENegativeCache(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "neg/known", "other", types.OCIManifestSchema1)
	const negTTL = 500 * time.Millisecond
	rc := startRegcache(t, harness.Config("  negative_ttl: 500ms\n", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)

	cases := []struct {
		name, repo, ref, code string
	}{
		{"unknown repository", "neg/ghost", "latest", "NAME_UNKNOWN"},
		{"unknown tag", "neg/known", "missing", "MANIFEST_UNKNOWN"},
		{"unknown digest", "neg/known", "sha256:" + strings.Repeat("0", 64), "MANIFEST_UNKNOWN"},
	}
	start := time.Now()
	for _, c := range cases {
		up.reset()
		r := rc.Do(t, "GET", "/v2/reg.test/"+c.repo+"/manifests/"+c.ref)
		if code := ceError(t, c.name, r, "GET", 404); code != c.code {
			t.Fatalf("%s: code %s, want %s", c.name, code, c.code)
		}
		up.expectUpstream(t, c.name, ceManifests("GET", c.repo, c.ref))
	}
	// Upstream gains the image; within negative_ttl regcache still answers from memory.
	ghost := reg.PushImage(t, "neg/ghost", "latest", types.DockerManifestSchema2)
	up.reset()
	for _, c := range cases {
		for _, m := range []string{"GET", "HEAD"} {
			r := rc.Do(t, m, "/v2/reg.test/"+c.repo+"/manifests/"+c.ref)
			if code := ceError(t, c.name+" remembered", r, m, 404); m == "GET" && code != c.code {
				t.Fatalf("%s remembered: code %s", c.name, code)
			}
		}
	}
	if time.Since(start) < negTTL {
		up.expectUpstream(t, "within negative_ttl")
	}
	time.Sleep(negTTL + 100*time.Millisecond)
	up.reset()
	ceExpect(t, "after negative_ttl", rc.Do(t, "GET", "/v2/reg.test/neg/ghost/manifests/latest"), "MISS", ghost, "GET")
	r := rc.Do(t, "HEAD", "/v2/reg.test/neg/known/manifests/missing")
	ceError(t, "unknown tag after negative_ttl", r, "HEAD", 404)
	up.expectUpstream(t, "after negative_ttl",
		ceManifests("GET", "neg/ghost", "latest"), ceManifests("HEAD", "neg/known", "missing"))
}

func TestCacheE2EDenied(t *testing.T) {
	t.Parallel()
	basic := registrytest.New(t, registrytest.Basic)
	p := basic.PushImage(t, "private/app", "v1", types.OCIManifestSchema1)
	tokenReg := registrytest.New(t, registrytest.BearerBasic)
	tokenReg.PushImage(t, "private/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("right.test", basic.URL, "credentials:", "  username: "+basic.Username, "  password: "+basic.Password),
		harness.Upstream("anon.test", basic.URL),
		harness.Upstream("wrong.test", basic.URL, "credentials:", "  username: "+basic.Username, "  password: not-it"),
		harness.Upstream("token-anon.test", tokenReg.URL),
		harness.Upstream("token-wrong.test", tokenReg.URL, "credentials:", "  username: robot", "  password: not-it"),
	))
	ceExpect(t, "right credentials", rc.Do(t, "GET", "/v2/right.test/private/app/manifests/v1"), "MISS", p, "GET")
	for _, name := range []string{"anon.test", "wrong.test", "token-anon.test"} {
		path := "/v2/" + name + "/private/app/manifests/v1"
		r := rc.Do(t, "GET", path)
		if code := ceError(t, name, r, "GET", 403); code != "DENIED" {
			t.Fatalf("%s: code %s, want DENIED", name, code)
		}
		if !strings.Contains(string(r.Body), "upstream refused") {
			t.Fatalf("%s: message %s", name, r.Body)
		}
		if strings.Contains(string(r.Body), basic.Password) || strings.Contains(string(r.Body), "not-it") {
			t.Fatalf("%s: error leaks a password: %s", name, r.Body)
		}
		// Remembered like a 404: asking again within negative_ttl costs upstream nothing.
		before := basic.Total() + tokenReg.Total()
		ceError(t, name+" again", rc.Do(t, "HEAD", path), "HEAD", 403)
		ceError(t, name+" again", rc.Do(t, "GET", path), "GET", 403)
		if after := basic.Total() + tokenReg.Total(); after != before {
			t.Fatalf("%s: a remembered denial cost %d upstream requests", name, after-before)
		}
	}
	// A token endpoint refusing regcache's own credentials is not a denial of the image: it
	// is an outage of the upstream, 502, and never remembered. (Refusing anonymous access,
	// above, is an answer: ghcr.io's token endpoint says so for a private package.)
	for _, name := range []string{"token-wrong.test"} {
		path := "/v2/" + name + "/private/app/manifests/v1"
		for i := range 2 {
			before := tokenReg.Count("GET", "token")
			r := rc.Do(t, "GET", path)
			if code := ceError(t, name, r, "GET", 502); code != "UNAVAILABLE" || !strings.Contains(string(r.Body), "by the token endpoint") {
				t.Fatalf("%s: code %s, want UNAVAILABLE naming the token endpoint: %s", name, code, r.Body)
			}
			if strings.Contains(string(r.Body), "not-it") || strings.Contains(string(r.Body), tokenReg.Password) {
				t.Fatalf("%s: error leaks a password: %s", name, r.Body)
			}
			if tokenReg.Count("GET", "token") == before {
				t.Fatalf("%s, request %d: the token endpoint was not asked: the refusal was remembered", name, i)
			}
		}
	}
}

// 10. An upstream whose HEAD lacks Docker-Content-Digest is asked with GET instead; the
// body it brought is kept, so the next GET is a hit.
func TestCacheE2EHeadWithoutDigest(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "nodigest/app"
	p := reg.PushIndex(t, repo, "t", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	up := ceWatchRegistry(reg)
	up.set(reg.StripDigestOnHead())
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	// The fault really strips the header.
	if d := ceDirect(t, reg, "HEAD", repo, "t").Header.Get("Docker-Content-Digest"); d != "" {
		t.Fatalf("StripDigestOnHead left %s", d)
	}
	up.reset()
	ceExpect(t, "HEAD tag, upstream HEAD without digest", rc.Do(t, "HEAD", path("t")), "MISS", p, "HEAD")
	up.expectUpstream(t, "HEAD tag, upstream HEAD without digest", ceManifests("HEAD", repo, "t"), ceManifests("GET", repo, "t"))
	if reg.Count("GET", "manifest") != 1 {
		t.Fatalf("upstream GETs %d, want 1", reg.Count("GET", "manifest"))
	}
	up.reset()
	ceExpect(t, "GET tag after", rc.Do(t, "GET", path("t")), "HIT", p, "GET")
	ceExpect(t, "GET digest after", rc.Do(t, "GET", path(p.Digest)), "HIT", p, "GET")
	ceExpect(t, "HEAD digest after", rc.Do(t, "HEAD", path(p.Digest)), "HIT", p, "HEAD")
	up.expectUpstream(t, "after the fallback GET")
}
