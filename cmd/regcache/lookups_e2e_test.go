package main

// What a lookup costs upstream (docs/design.md, "What a lookup costs upstream"): every row
// of the cost table, coalesced bursts, tag_ttl revalidation and retags, the negative cache
// and HEADs that lack a digest, against real registries with every manifest request that
// reaches them recorded; and every answer upstream's own, byte for byte.

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// manifestKinds are the four manifest kinds every update checker meets.
var manifestKinds = []struct {
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

// askUpstream is reg's own answer to method repo:ref, the reference regcache must
// reproduce.
func askUpstream(t testing.TB, reg *registrytest.Registry, method, repo, ref string) harness.Response {
	t.Helper()
	r, err := harness.AskRegistry(reg, method, "/v2/"+repo+"/manifests/"+ref, "Accept", harness.AcceptAll)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != http.StatusOK {
		t.Fatalf("direct %s %s:%s: %d", method, repo, ref, r.Status)
	}
	return r
}

// Four manifest kinds, by tag and by digest, GET and HEAD, through all three routing
// forms: digest, type, length and body are upstream's, byte for byte.
func TestFourKindsByteForByte(t *testing.T) {
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
		for _, k := range manifestKinds {
			pushed[f.name+k.name] = k.push(t, f.reg, "kinds/"+k.name, "v1")
		}
	}
	for _, f := range forms {
		for _, k := range manifestKinds {
			repo := "kinds/" + k.name
			p := pushed[f.name+k.name]
			if p.MediaType != string(k.mt) {
				t.Fatalf("seeded %s as %s", k.name, p.MediaType)
			}
			// Upstream's own answers are the reference.
			upGet := askUpstream(t, f.reg, http.MethodGet, repo, "v1")
			upHead := askUpstream(t, f.reg, http.MethodHead, repo, "v1")
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
				harness.ExpectManifest(t, what, r, "", p, method)
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

// The cost table's rows, one by one, with the exact upstream requests each costs.
func TestCostTable(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "team/app"
	a := reg.PushImage(t, repo, "a", types.OCIManifestSchema1)
	b := reg.PushIndex(t, repo, "b", types.OCIImageIndex, "linux/amd64")
	c := reg.PushImage(t, repo, "c", types.DockerManifestSchema2)
	d := reg.PushImage(t, repo, "d", types.OCIManifestSchema1)
	const ttl = 1500 * time.Millisecond
	rc := startRegcache(t, harness.Config("  tag_ttl: 1500ms\n", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)

	step := func(what, method, ref string, p registrytest.Pushed, xcache string, wantUp ...string) {
		t.Helper()
		up.Reset()
		r := rc.Do(t, method, "/v2/reg.test/"+repo+"/manifests/"+ref)
		harness.ExpectManifest(t, what, r, xcache, p, method)
		up.ExpectManifests(t, what, wantUp...)
	}
	step("HEAD tag, cold, never asked again", "HEAD", "d", d, "MISS", harness.ManifestRequest("HEAD", repo, "d"))
	step("HEAD tag, cold", "HEAD", "a", a, "MISS", harness.ManifestRequest("HEAD", repo, "a"))
	step("HEAD tag, fresh", "HEAD", "a", a, "HIT")
	step("GET tag, only HEAD before", "GET", "a", a, "MISS", harness.ManifestRequest("GET", repo, a.Digest))
	step("GET tag, fresh with body", "GET", "a", a, "HIT")

	step("GET tag, cold", "GET", "b", b, "MISS", harness.ManifestRequest("GET", repo, "b"))
	step("GET tag again", "GET", "b", b, "HIT")
	step("HEAD tag after GET", "HEAD", "b", b, "HIT")

	for _, p := range []registrytest.Pushed{a, b} {
		step("GET digest, cached", "GET", p.Digest, p, "HIT")
		step("HEAD digest, cached", "HEAD", p.Digest, p, "HIT")
	}

	step("HEAD digest, cold", "HEAD", c.Digest, c, "MISS", harness.ManifestRequest("HEAD", repo, c.Digest))
	step("HEAD digest, metadata cached", "HEAD", c.Digest, c, "HIT")
	step("GET digest, only HEAD before", "GET", c.Digest, c, "MISS", harness.ManifestRequest("GET", repo, c.Digest))
	step("GET digest, cached", "GET", c.Digest, c, "HIT")

	// "None, ever": once every tag has expired and upstream answers nothing but 500,
	// content-addressed answers still come from memory without a single upstream request.
	time.Sleep(ttl + 200*time.Millisecond)
	up.Set(registrytest.OnManifests(registrytest.Status(http.StatusInternalServerError)))
	for _, p := range []registrytest.Pushed{a, b, c} {
		step("GET digest after tag_ttl, upstream down", "GET", p.Digest, p, "HIT")
		step("HEAD digest after tag_ttl, upstream down", "HEAD", p.Digest, p, "HIT")
	}
	// A tag asked during its TTL window was refreshed ahead, in the background, before it
	// expired (while upstream still answered): fresh, at no cost.
	step("HEAD tag asked in its window, after tag_ttl", "HEAD", "a", a, "HIT")
	// While a tag nobody asked since it was fetched is stale now and costs a revalidation
	// attempt.
	step("HEAD tag after tag_ttl, upstream down", "HEAD", "d", d, "STALE", harness.ManifestRequest("HEAD", repo, "d"))
}

// 200 clients at once on a cold tag cost exactly one upstream manifest request.
func TestCoalescedBurst(t *testing.T) {
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
		path := "/v2/reg.test/burst/app/manifests/" + tc.tag
		res := harness.Burst([]*harness.Instance{rc}, n, tc.method, func(int) string { return path })
		misses := 0
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("%s client %d: %v", tc.method, i, r.Err)
			}
			if digest := r.Header.Get("Docker-Content-Digest"); r.Status != http.StatusOK || digest != tc.p.Digest {
				t.Fatalf("%s client %d: status %d digest %s, want 200 %s", tc.method, i, r.Status, digest, tc.p.Digest)
			}
			if tc.method == http.MethodGet && string(r.Body) != string(tc.p.Body) {
				t.Fatalf("GET client %d: body differs from upstream's", i)
			}
			switch x := r.Header.Get("X-Cache"); x {
			case "MISS":
				misses++
			case "HIT": // a client that arrived after the one upstream answer was stored
			default:
				t.Fatalf("%s client %d: X-Cache %q", tc.method, i, x)
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

// After tag_ttl an unchanged tag costs one HEAD (REVALIDATED, body from memory); a
// retagged one is seen (MISS, one HEAD plus one GET by digest for a GET client).
func TestTagTTLRevalidateAndRetag(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "ttl/app"
	g1 := reg.PushImage(t, repo, "for-get", types.OCIManifestSchema1)
	h1 := reg.PushIndex(t, repo, "for-head", types.OCIImageIndex, "linux/amd64")
	const ttl = 300 * time.Millisecond
	rc := startRegcache(t, harness.Config("  tag_ttl: 300ms\n", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	harness.ExpectManifest(t, "warm GET", rc.Do(t, "GET", path("for-get")), "MISS", g1, "GET")
	harness.ExpectManifest(t, "warm HEAD", rc.Do(t, "HEAD", path("for-head")), "MISS", h1, "HEAD")
	time.Sleep(ttl + 100*time.Millisecond)

	up.Reset()
	harness.ExpectManifest(t, "GET after tag_ttl, unchanged", rc.Do(t, "GET", path("for-get")), "REVALIDATED", g1, "GET")
	up.ExpectManifests(t, "GET after tag_ttl, unchanged", harness.ManifestRequest("HEAD", repo, "for-get"))
	up.Reset()
	harness.ExpectManifest(t, "HEAD after tag_ttl, unchanged", rc.Do(t, "HEAD", path("for-head")), "REVALIDATED", h1, "HEAD")
	up.ExpectManifests(t, "HEAD after tag_ttl, unchanged", harness.ManifestRequest("HEAD", repo, "for-head"))

	// Retag both upstream: a different manifest (of another kind, even) under the same tag.
	g2 := reg.PushIndex(t, repo, "for-get", types.DockerManifestList, "linux/amd64")
	h2 := reg.PushImage(t, repo, "for-head", types.DockerManifestSchema2)
	time.Sleep(ttl + 100*time.Millisecond)

	up.Reset()
	harness.ExpectManifest(t, "GET after retag and tag_ttl", rc.Do(t, "GET", path("for-get")), "MISS", g2, "GET")
	up.ExpectManifests(t, "GET after retag", harness.ManifestRequest("HEAD", repo, "for-get"), harness.ManifestRequest("GET", repo, g2.Digest))
	up.Reset()
	harness.ExpectManifest(t, "HEAD after retag and tag_ttl", rc.Do(t, "HEAD", path("for-head")), "MISS", h2, "HEAD")
	up.ExpectManifests(t, "HEAD after retag", harness.ManifestRequest("HEAD", repo, "for-head"))

	// The new manifest is cached by digest; the old ones are still there too (immutable).
	up.Reset()
	harness.ExpectManifest(t, "new digest cached", rc.Do(t, "GET", path(g2.Digest)), "HIT", g2, "GET")
	harness.ExpectManifest(t, "old digest still cached", rc.Do(t, "GET", path(g1.Digest)), "HIT", g1, "GET")
	up.ExpectManifests(t, "digests after retag")
}

// Upstream's 404 is remembered for negative_ttl, then asked again; an upstream that
// refuses our credentials for a manifest is 403 DENIED (its token endpoint refusing
// configured credentials is 502 UPSTREAM_FAILED, TestUpstreamDenied).
func TestNegativeCache(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "neg/known", "other", types.OCIManifestSchema1)
	const negTTL = 500 * time.Millisecond
	rc := startRegcache(t, harness.Config("  negative_ttl: 500ms\n", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)

	cases := []struct {
		name, repo, ref, code string
	}{
		{"unknown repository", "neg/ghost", "latest", "NAME_UNKNOWN"},
		{"unknown tag", "neg/known", "missing", "MANIFEST_UNKNOWN"},
		{"unknown digest", "neg/known", "sha256:" + strings.Repeat("0", 64), "MANIFEST_UNKNOWN"},
	}
	start := time.Now()
	for _, c := range cases {
		up.Reset()
		r := rc.Do(t, "GET", "/v2/reg.test/"+c.repo+"/manifests/"+c.ref)
		if code := harness.ExpectError(t, c.name, r, "GET", 404); code != c.code {
			t.Fatalf("%s: code %s, want %s", c.name, code, c.code)
		}
		up.ExpectManifests(t, c.name, harness.ManifestRequest("GET", c.repo, c.ref))
	}
	// Upstream gains the image; within negative_ttl regcache still answers from memory.
	ghost := reg.PushImage(t, "neg/ghost", "latest", types.DockerManifestSchema2)
	up.Reset()
	for _, c := range cases {
		for _, m := range []string{"GET", "HEAD"} {
			r := rc.Do(t, m, "/v2/reg.test/"+c.repo+"/manifests/"+c.ref)
			if code := harness.ExpectError(t, c.name+" remembered", r, m, 404); m == "GET" && code != c.code {
				t.Fatalf("%s remembered: code %s", c.name, code)
			}
		}
	}
	if time.Since(start) < negTTL {
		up.ExpectManifests(t, "within negative_ttl")
	}
	time.Sleep(negTTL + 100*time.Millisecond)
	up.Reset()
	harness.ExpectManifest(t, "after negative_ttl", rc.Do(t, "GET", "/v2/reg.test/neg/ghost/manifests/latest"), "MISS", ghost, "GET")
	r := rc.Do(t, "HEAD", "/v2/reg.test/neg/known/manifests/missing")
	harness.ExpectError(t, "unknown tag after negative_ttl", r, "HEAD", 404)
	up.ExpectManifests(t, "after negative_ttl",
		harness.ManifestRequest("GET", "neg/ghost", "latest"), harness.ManifestRequest("HEAD", "neg/known", "missing"))
}

// An upstream whose HEAD lacks Docker-Content-Digest is asked with GET instead; the
// body it brought is kept, so the next GET is a hit.
func TestHeadWithoutDigest(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "nodigest/app"
	p := reg.PushIndex(t, repo, "t", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)
	up.Set(reg.StripDigestOnHead())
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	// The fault really strips the header.
	if d := askUpstream(t, reg, "HEAD", repo, "t").Header.Get("Docker-Content-Digest"); d != "" {
		t.Fatalf("StripDigestOnHead left %s", d)
	}
	up.Reset()
	harness.ExpectManifest(t, "HEAD tag, upstream HEAD without digest", rc.Do(t, "HEAD", path("t")), "MISS", p, "HEAD")
	up.ExpectManifests(t, "HEAD tag, upstream HEAD without digest", harness.ManifestRequest("HEAD", repo, "t"), harness.ManifestRequest("GET", repo, "t"))
	if reg.Count("GET", "manifest") != 1 {
		t.Fatalf("upstream GETs %d, want 1", reg.Count("GET", "manifest"))
	}
	up.Reset()
	harness.ExpectManifest(t, "GET tag after", rc.Do(t, "GET", path("t")), "HIT", p, "GET")
	harness.ExpectManifest(t, "GET digest after", rc.Do(t, "GET", path(p.Digest)), "HIT", p, "GET")
	harness.ExpectManifest(t, "HEAD digest after", rc.Do(t, "HEAD", path(p.Digest)), "HIT", p, "HEAD")
	up.ExpectManifests(t, "after the fallback GET")
}
