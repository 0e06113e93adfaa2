package main

// The status page at / and /status: rendered by a real browser (headless chromium) after
// known traffic, its figures must be those of the run; its JSON form must match /metrics;
// it is behind client auth when auth is on.

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache/redistest"
	"regcache/internal/feed"
	"regcache/internal/harness"
	"regcache/internal/version"
	"regcache/proxy"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// statusRun is regcache in front of three registries after known traffic:
//   - hub.test (token auth, sending Docker Hub's RateLimit headers): 10 HEADs of one tag
//     (1 MISS, 9 HIT) and 5 GETs of another (1 MISS, 4 HIT);
//   - ghcr.test (tag_ttl 200ms): two tags each asked, moved upstream and asked again (two
//     tag.changed events);
//   - quay.test, answering 503: one GET, one failure.
type statusRun struct {
	rc             *harness.Instance
	moved          []registrytest.Pushed
	hubUpstreamReq int
}

func startStatusRun(t *testing.T) *statusRun {
	t.Helper()
	hub := registrytest.New(t, registrytest.Bearer)
	hub.PushImage(t, "library/nginx", "1.27", types.OCIManifestSchema1)
	hub.PushIndex(t, "library/redis", "7.4", types.OCIImageIndex, "linux/amd64", "linux/arm64")
	hub.SetFault(registrytest.WithHeaders("RateLimit-Limit", "100;w=21600", "RateLimit-Remaining", "97;w=21600"))
	ghcr := registrytest.New(t, registrytest.NoAuth)
	images := []string{"home-assistant/home-assistant:stable", "immich-app/immich-server:release"}
	for _, image := range images {
		repo, tag, _ := strings.Cut(image, ":")
		ghcr.PushIndex(t, repo, tag, types.OCIImageIndex, "linux/amd64", "linux/arm64")
	}
	quay := registrytest.New(t, registrytest.NoAuth)
	quay.SetFault(registrytest.Status(http.StatusServiceUnavailable))
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("hub.test", hub.URL),
		harness.Upstream("ghcr.test", ghcr.URL, "tag_ttl: 200ms"),
		harness.Upstream("quay.test", quay.URL, "failures_to_open: 100")))

	ask := func(method, path string, want int, xcache string) harness.Response {
		t.Helper()
		r := rc.Do(t, method, path)
		if r.Status != want || (xcache != "" && r.Header.Get("X-Cache") != xcache) {
			t.Fatalf("%s %s: %d %s, want %d %s (%s)", method, path, r.Status, r.Header.Get("X-Cache"), want, xcache, r.Body)
		}
		return r
	}
	firstMiss := func(i int) string { return map[bool]string{true: "MISS", false: "HIT"}[i == 0] }
	for i := range 10 {
		ask(http.MethodHead, "/v2/hub.test/library/nginx/manifests/1.27", http.StatusOK, firstMiss(i))
	}
	for i := range 5 {
		ask(http.MethodGet, "/v2/hub.test/library/redis/manifests/7.4", http.StatusOK, firstMiss(i))
	}
	run := &statusRun{rc: rc}
	for _, image := range images {
		repo, tag, _ := strings.Cut(image, ":")
		ask(http.MethodGet, "/v2/ghcr.test/"+repo+"/manifests/"+tag, http.StatusOK, "MISS")
		run.moved = append(run.moved, ghcr.PushIndex(t, repo, tag, types.OCIImageIndex, "linux/amd64", "linux/arm64", "linux/arm/v7"))
	}
	time.Sleep(250 * time.Millisecond) // past tag_ttl: the next HEADs revalidate and see the moves
	for i, image := range images {
		repo, tag, _ := strings.Cut(image, ":")
		if r := ask(http.MethodHead, "/v2/ghcr.test/"+repo+"/manifests/"+tag, http.StatusOK, ""); r.Header.Get("Docker-Content-Digest") != run.moved[i].Digest {
			t.Fatalf("%s after the move: %s, want %s", image, r.Header.Get("Docker-Content-Digest"), run.moved[i].Digest)
		}
	}
	ask(http.MethodGet, "/v2/quay.test/prometheus/node-exporter/manifests/v1.8.2", http.StatusServiceUnavailable, "")
	run.hubUpstreamReq = hub.Total()
	return run
}

// figure is the text of the element with data-figure=name inside the element whose
// attribute scope (`data-upstream="hub.test"`) opens it, or of the element with id=name.
func figure(t *testing.T, dom, scope, name string) string {
	t.Helper()
	if scope != "" {
		i := strings.Index(dom, scope)
		if i < 0 {
			t.Fatalf("the page has no %s\n%s", scope, dom)
		}
		dom = dom[i:]
		dom = dom[:strings.Index(dom, "</tr>")]
	}
	attr := `data-figure="` + name + `"`
	if scope == "" {
		attr = `id="` + name + `"`
	}
	m := regexp.MustCompile(regexp.QuoteMeta(attr) + `[^>]*>([^<]*)<`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("the page shows no %s %s", scope, attr)
	}
	return strings.TrimSpace(m[1])
}

func TestStatusPageInBrowser(t *testing.T) {
	t.Parallel()
	harness.Tool(t, "chromium", "apt-get install chromium")
	run := startStatusRun(t)
	rc := run.rc
	dom := harness.RenderedDOM(t, rc.URL+"/")
	m := rc.Metrics(t)

	if !strings.Contains(dom, `<meta http-equiv="refresh" content="10">`) {
		t.Error("the page does not refresh itself every 10 s")
	}
	if strings.Contains(dom, "<script") {
		t.Error("the page has a script")
	}
	if got := figure(t, dom, "", "version"); got != version.String() {
		t.Errorf("version %q, want %q", got, version.String())
	}
	hub := `data-upstream="hub.test"`
	for name, want := range map[string]string{
		"client_requests": "15", "hit_ratio": "86.7%", "requests_saved": "13",
		"upstream_requests":    strconv.Itoa(run.hubUpstreamReq),
		"rate_limit_remaining": "97", "rate_limit_limit": "100", "rate_limit_window": "6h",
	} {
		if got := figure(t, dom, hub, name); got != want {
			t.Errorf("hub.test %s: the page shows %q, want %q", name, got, want)
		}
	}
	// Of hub.test's manifests, one HEAD and one GET went upstream: the misses.
	for _, method := range []string{"HEAD", "GET"} {
		if got := m[`regcache_upstream_requests_total{kind="manifest",method="`+method+`",status="200",upstream="hub.test"}`]; got != 1 {
			t.Errorf("manifest %ss sent to hub.test: %v, want 1", method, got)
		}
	}
	quay := `data-upstream="quay.test"`
	if got := figure(t, dom, quay, "last_error"); !strings.Contains(got, "injected failure") || !strings.Contains(got, "HTTP 503") {
		t.Errorf("quay.test's last error shows %q; want the upstream's message and HTTP 503", got)
	}
	if got := figure(t, dom, quay, "hit_ratio"); got != "–" {
		t.Errorf("quay.test's hit ratio with no answer from the cache: %q, want –", got)
	}
	totalUp := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "regcache_upstream_requests_total{") {
			totalUp += v
		}
	}
	if totalUp == 0 || m["regcache_cache_entries"] == 0 {
		t.Errorf("/metrics: %v upstream requests, %v cache entries; want both counted", totalUp, m["regcache_cache_entries"])
	}
	for id, want := range map[string]string{
		"total-client-requests": "20", "total-requests-saved": "13",
		"total-upstream-requests": strconv.Itoa(int(totalUp)),
		// 13 HIT of the 19 the cache answered (quay.test's 503 was no answer of the cache).
		"total-hit-ratio": "68.4%",
		"cache-entries":   strconv.Itoa(int(m["regcache_cache_entries"])),
	} {
		if got := figure(t, dom, "", id); got != want {
			t.Errorf("%s: the page shows %q, want %q", id, got, want)
		}
	}
	for _, p := range run.moved {
		if !strings.Contains(dom, p.Digest[:len("sha256:")+12]) {
			t.Errorf("the last changes do not show the move to %s", p.Digest)
		}
	}
	if !strings.Contains(dom, "ghcr.test/home-assistant/home-assistant:stable") || !strings.Contains(dom, "ghcr.test/immich-app/immich-server:release") {
		t.Error("the last changes do not name the images that moved")
	}

	shot := t.TempDir() + "/status.png"
	if dst := os.Getenv("REGCACHE_STATUS_SCREENSHOT"); dst != "" {
		shot = dst // docs/status.png: see docs/testing.md
	}
	harness.Screenshot(t, rc.URL+"/", shot, 1200, 900)
	if png, err := os.ReadFile(shot); err != nil || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Fatalf("screenshot %s is no PNG: %v", shot, err)
	}
}

// TestStatusJSONMatchesMetrics: the JSON form gives the figures /metrics gives.
func TestStatusJSONMatchesMetrics(t *testing.T) {
	t.Parallel()
	run := startStatusRun(t)
	rc := run.rc
	r := rc.Do(t, http.MethodGet, "/status", "Accept", "application/json")
	if r.Status != http.StatusOK || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("JSON form: %d %s", r.Status, r.Header.Get("Content-Type"))
	}
	var s proxy.Status
	if err := json.Unmarshal(r.Body, &s); err != nil {
		t.Fatalf("JSON form: %v\n%s", err, r.Body)
	}
	m := rc.Metrics(t)
	sum := func(series string, labels ...string) uint64 {
		var n float64
	next:
		for k, v := range m {
			if k != series && !strings.HasPrefix(k, series+"{") {
				continue
			}
			for _, l := range labels {
				if !strings.Contains(k, l) {
					continue next
				}
			}
			n += v
		}
		return uint64(n)
	}
	if s.Version != version.String() || m[`regcache_build_info{version="`+version.String()+`"}`] != 1 {
		t.Errorf("version %q; /metrics build_info %v", s.Version, m[`regcache_build_info{version="`+version.String()+`"}`])
	}
	if got, want := s.Started.Unix(), int64(m["regcache_start_time_seconds"]); got != want {
		t.Errorf("started %d, /metrics %d", got, want)
	}
	if len(s.Upstreams) != 3 {
		t.Fatalf("%d upstreams, want 3: %+v", len(s.Upstreams), s.Upstreams)
	}
	var totals proxy.Figures
	for _, u := range s.Upstreams {
		l := `upstream="` + u.Name + `"`
		for _, c := range []struct {
			what      string
			got, want uint64
		}{
			{"client_requests", u.ClientRequests, sum("regcache_upstream_client_requests_total", l)},
			{"hits", u.Hits, sum("regcache_upstream_client_requests_total", l, `cache="HIT"`)},
			{"client_requests_by_cache MISS", u.ByCache["MISS"], sum("regcache_upstream_client_requests_total", l, `cache="MISS"`)},
			{"upstream_requests", u.UpstreamRequests, sum("regcache_upstream_requests_total", l)},
			{"requests_saved", u.RequestsSaved, sum("regcache_upstream_requests_saved_total", l)},
			{"errors", u.Errors, sum("regcache_upstream_errors_total", l)},
		} {
			if c.got != c.want {
				t.Errorf("%s %s: JSON %d, /metrics %d", u.Name, c.what, c.got, c.want)
			}
		}
		totals.ClientRequests += u.ClientRequests
		totals.RequestsSaved += u.RequestsSaved
	}
	hub, ghcr, quay := s.Upstreams[0], s.Upstreams[1], s.Upstreams[2]
	if hub.Name != "hub.test" || hub.ClientRequests != 15 || hub.Hits != 13 || hub.RequestsSaved != 13 || hub.HitRatio == nil || *hub.HitRatio != 13.0/15 {
		t.Errorf("hub.test: %+v; want 15 requests, 13 hits and saved, ratio 13/15", hub)
	}
	if rl := hub.RateLimit; rl == nil || rl.Remaining == nil || *rl.Remaining != 97 || rl.Limit == nil || *rl.Limit != 100 ||
		rl.WindowSeconds == nil || *rl.WindowSeconds != 21600 || float64(*rl.Remaining) != m[`regcache_upstream_ratelimit_remaining{upstream="hub.test"}`] ||
		float64(*rl.WindowSeconds) != m[`regcache_upstream_ratelimit_window_seconds{upstream="hub.test"}`] {
		t.Errorf("hub.test rate limit %+v; want 97 of 100 per 21600 s, as /metrics", rl)
	}
	if ghcr.RateLimit != nil || hub.LastError != nil || hub.Errors != 0 {
		t.Errorf("ghcr.test rate limit %+v, hub.test errors %d %+v: want none", ghcr.RateLimit, hub.Errors, hub.LastError)
	}
	if e := quay.LastError; quay.Errors == 0 || e == nil || e.Status != 503 || e.Kind != "unavailable" || !strings.Contains(e.Message, "injected failure") ||
		math.Abs(float64(e.Time.UnixNano())/1e9-m[`regcache_upstream_last_error_timestamp_seconds{upstream="quay.test"}`]) > 0.001 {
		t.Errorf("quay.test: %d errors, last %+v; want the 503 at the time /metrics gives", quay.Errors, e)
	}
	if quay.HitRatio != nil || quay.ByCache["none"] != 1 {
		t.Errorf("quay.test: ratio %v, by cache %v; want no ratio and one answer without the cache", quay.HitRatio, quay.ByCache)
	}
	if s.Totals.ClientRequests != totals.ClientRequests || s.Totals.RequestsSaved != totals.RequestsSaved ||
		s.Totals.UpstreamRequests != sum("regcache_upstream_requests_total") {
		t.Errorf("totals %+v; want the upstreams' sums and /metrics' upstream requests", s.Totals)
	}
	c := s.Cache
	if c.Entries <= 0 || c.Entries != int64(m["regcache_cache_entries"]) || c.SizeBytes != int64(m["regcache_cache_size_bytes"]) ||
		c.MaxBytes != 64<<20 || c.MaxBytes != int64(m["regcache_cache_max_bytes"]) {
		t.Errorf("cache %+v; want what /metrics gives, of 64 MiB", c)
	}
	if s.Redis != nil {
		t.Errorf("redis %+v without a Redis tier", s.Redis)
	}
	if s.Changes == nil || len(s.Changes.Recent) != 2 || s.Changes.Recent[0].Type != feed.TagChanged ||
		s.Changes.Recent[0].Digest != run.moved[1].Digest || s.Changes.Recent[1].Digest != run.moved[0].Digest ||
		s.Changes.Total[feed.TagChanged] != uint64(m[`regcache_events_total{type="tag.changed"}`]) || s.Changes.Total[feed.TagChanged] != 2 {
		t.Errorf("changes %+v; want the two moves, newest first, as /metrics counts them", s.Changes)
	}
}

// TestStatusNegotiation: JSON for a client that prefers it, HTML for anything else; HEAD
// and the two paths alike; other methods refused.
func TestStatusNegotiation(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	browser := "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
	for _, c := range []struct {
		path, accept string
		json         bool
	}{
		{"/", "", false},
		{"/", "*/*", false},
		{"/status", browser, false},
		{"/", "application/json", true},
		{"/status", "application/json, text/plain, */*", true},
		{"/", "text/html;q=0.9, application/json", true},
		{"/", "text/html, application/json", false},
		{"/", "application/json;q=0", false},
		{"/status?format=json", browser, true},
	} {
		var header []string
		if c.accept != "" {
			header = []string{"Accept", c.accept}
		}
		r := rc.Do(t, http.MethodGet, c.path, header...)
		ct := r.Header.Get("Content-Type")
		what := fmt.Sprintf("GET %s Accept %q", c.path, c.accept)
		switch {
		case r.Status != http.StatusOK:
			t.Errorf("%s: %d %s", what, r.Status, r.Body)
		case c.json && (ct != "application/json" || !json.Valid(r.Body)):
			t.Errorf("%s: %s, want JSON", what, ct)
		case !c.json && (ct != "text/html; charset=utf-8" || !strings.HasPrefix(string(r.Body), "<!DOCTYPE html>")):
			t.Errorf("%s: %s, want HTML", what, ct)
		case r.Header.Get("Vary") != "Accept":
			t.Errorf("%s: Vary %q, want Accept", what, r.Header.Get("Vary"))
		}
	}
	if r := rc.Do(t, http.MethodHead, "/status"); r.Status != http.StatusOK || len(r.Body) != 0 || r.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Errorf("HEAD /status: %d %s, %d bytes", r.Status, r.Header.Get("Content-Type"), len(r.Body))
	}
	r := rc.Do(t, http.MethodPost, "/")
	harness.ExpectErrorCode(t, "POST /", r, http.MethodPost, http.StatusMethodNotAllowed, "UNSUPPORTED")
	if r.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: Allow %q", r.Header.Get("Allow"))
	}
}

// TestStatusBehindAuth: with client auth on, the page and its JSON need credentials like
// every endpoint but /healthz, /readyz and /token; with them, it is served.
func TestStatusBehindAuth(t *testing.T) {
	t.Parallel()
	rc, static, _ := startWithStaticToken(t, "")
	for _, path := range []string{"/", "/status", "/status?format=json"} {
		expectChallenge(t, "GET "+path+" without credentials", rc.Do(t, http.MethodGet, path), challengeFor(rc.URL))
		expectChallenge(t, "GET "+path+" with a wrong token", rc.Do(t, http.MethodGet, path, "Authorization", "Bearer wrong"), challengeFor(rc.URL))
		for _, auth := range []string{"Bearer " + static, basicHeader("ci", static)} {
			if r := rc.Do(t, http.MethodGet, path, "Authorization", auth); r.Status != http.StatusOK || strings.Contains(string(r.Body), static) {
				t.Errorf("GET %s with credentials: %d", path, r.Status)
			}
		}
	}
}

// TestStatusRedisTier: with the shared tier, the page shows whether Redis answers, and
// since when and why not, as /metrics and /readyz do.
func TestStatusRedisTier(t *testing.T) {
	t.Parallel()
	if redistest.Binary() == "" {
		redistest.Skip(t)
	}
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  redis:\n    addr: "+rs.Addr+"\n    timeout: 1s\n", harness.Upstream("reg.test", reg.URL)))
	read := func() (proxy.Status, string) {
		t.Helper()
		var s proxy.Status
		if err := json.Unmarshal(rc.Do(t, http.MethodGet, "/status?format=json").Body, &s); err != nil {
			t.Fatal(err)
		}
		return s, string(rc.Do(t, http.MethodGet, "/status").Body)
	}
	if r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1"); r.Status != http.StatusOK {
		t.Fatalf("GET: %d", r.Status)
	}
	s, page := read()
	if s.Redis == nil || !s.Redis.Up || s.Redis.DownSince != nil || !strings.Contains(page, `id="redis-state" style="color: var(--good)">up<`) {
		t.Fatalf("Redis up: %+v\n%s", s.Redis, page)
	}
	rs.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for s.Redis.Up {
		if time.Now().After(deadline) {
			t.Fatal("Redis killed, but the page still shows it up after 10 s")
		}
		rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v2") // a miss asks Redis, which fails
		s, page = read()
	}
	m := rc.Metrics(t)
	if s.Redis.DownSince == nil || s.Redis.Reason == "" || s.Redis.Errors == 0 || float64(s.Redis.Errors) > m["regcache_redis_errors_total"] ||
		m["regcache_redis_up"] != 0 || !strings.Contains(page, `id="redis-state">down<`) || !strings.Contains(page, s.Redis.Reason) {
		t.Fatalf("Redis down: %+v (metrics up %v, errors %v)\n%s", s.Redis, m["regcache_redis_up"], m["regcache_redis_errors_total"], page)
	}
}

// TestStatusDocsScript: docs/status.md's shell recipe, run as written against a run whose
// figures are known (its address alone changes).
func TestStatusDocsScript(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"curl", "jq"} {
		harness.Tool(t, tool, "apt-get install "+tool)
	}
	script := docBlock(t, "docs/status.md", "## From a script", "sh")
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL), harness.Upstream("other.test", reg.URL)))
	for range 3 {
		if r := rc.Do(t, http.MethodHead, "/v2/reg.test/team/app/manifests/v1"); r.Status != http.StatusOK {
			t.Fatalf("HEAD: %d", r.Status)
		}
	}
	out, err := exec.Command("sh", "-c", strings.ReplaceAll(script, "http://localhost:5000", rc.URL)).CombinedOutput()
	if err != nil {
		t.Fatalf("the recipe failed: %v\n%s", err, out)
	}
	want := fmt.Sprintf("reg.test: 2 of 3 requests saved, %d made\nother.test: 0 of 0 requests saved, 0 made\n", reg.Total())
	if string(out) != want {
		t.Fatalf("the recipe printed\n%s\nwant\n%s", out, want)
	}
}

// TestStatusCountsErrorAnswersAsNone: an answer that is an error counts as none, never as a
// hit or a request saved, though the cache held what was asked: a strict_accept refusal of
// a cached manifest, and a digest API lookup whose platform the cached index lacks.
func TestStatusCountsErrorAnswersAsNone(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushIndex(t, "team/app", "v1", types.OCIImageIndex, "linux/amd64", "linux/arm64")
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL, "strict_accept: true")))
	count := func(cache string) float64 {
		return rc.Metrics(t)[`regcache_upstream_client_requests_total{cache="`+cache+`",upstream="reg.test"}`]
	}
	if r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1", "Accept", upstream.MediaTypeOCIIndex); r.Status != http.StatusOK {
		t.Fatalf("first GET: %d", r.Status)
	}
	harness.ExpectErrorCode(t, "a cached index refused by strict_accept", rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1",
		"Accept", upstream.MediaTypeDockerManifest), http.MethodGet, http.StatusNotFound, "MANIFEST_UNKNOWN")
	if hit, none := count("HIT"), count("none"); hit != 0 || none != 1 {
		t.Fatalf("after a refusal: %v HIT, %v none; want 0 and 1", hit, none)
	}
	if r := rc.Do(t, http.MethodGet, "/api/v1/digest?image=reg.test/team/app:v1&platform=linux/arm64"); r.Status != http.StatusOK {
		t.Fatalf("digest API, a platform the index has: %d %s", r.Status, r.Body)
	}
	if hit := count("HIT"); hit != 1 {
		t.Fatalf("digest API hit: %v HIT, want 1", hit)
	}
	if r := rc.Do(t, http.MethodGet, "/api/v1/digest?image=reg.test/team/app:v1&platform=linux/s390x"); r.Status == http.StatusOK {
		t.Fatalf("digest API, a platform the index lacks: %d %s", r.Status, r.Body)
	}
	if hit, none, saved := count("HIT"), count("none"), rc.Metrics(t)[`regcache_upstream_requests_saved_total{upstream="reg.test"}`]; hit != 1 || none != 2 || saved != 1 {
		t.Fatalf("after a platform not found: %v HIT, %v none, %v saved; want 1, 2, 1", hit, none, saved)
	}
}
