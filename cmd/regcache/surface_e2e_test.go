package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func tagNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("1.%03d", i)
	}
	return out
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
		tagsLinkLast(t, r)
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

func assertExactlyOnce(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d tags, want %d", len(got), len(want))
	}
	g := append([]string(nil), got...)
	sort.Strings(g)
	for i := range want {
		if g[i] != want[i] {
			t.Fatalf("tag %d: %q, want %q (duplicates or gaps)", i, g[i], want[i])
		}
	}
}

func TestTagsListPagingAllForms(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	want := tagNames(300)
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
	assertExactlyOnce(t, all.Tags, want)
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
		assertExactlyOnce(t, got, want)
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
	want := tagNames(300)
	reg.PushTags(t, "org/app", want)
	reg.SetPaging(registrytest.PagingQuay, 100)
	rc := startRegcache(t, harness.Config("", harness.Upstream("quay.io", reg.URL)))

	got, _ := followTags(t, rc, "/v2/quay.io/org/app/tags/list?n=120", "/v2/quay.io/org/app/tags/list?")
	assertExactlyOnce(t, got, want)
	got, _ = followTags(t, rc, "/v2/quay.io/org/app/tags/list?n=20000", "/v2/quay.io/org/app/tags/list?") // clamped
	assertExactlyOnce(t, got, want)

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
	reg.PushTags(t, "org/app", tagNames(5))
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

func TestBlobsConfigCachedAndVerified(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	cfgDigest, cfgBytes := reg.ConfigOf(t, "team/app", "v1")
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	reg.ResetCounts()
	path := "/v2/ghcr.io/team/app/blobs/" + cfgDigest.String()
	for i, wantCache := range []string{"MISS", "HIT", "HIT"} {
		r := rc.Do(t, http.MethodGet, path)
		if r.Status != 200 || !bytes.Equal(r.Body, cfgBytes) || r.Header.Get("Docker-Content-Digest") != cfgDigest.String() {
			t.Fatalf("GET %d: %d digest %q", i, r.Status, r.Header.Get("Docker-Content-Digest"))
		}
		if r.Header.Get("X-Cache") != wantCache {
			t.Fatalf("GET %d: X-Cache %q, want %s", i, r.Header.Get("X-Cache"), wantCache)
		}
	}
	h := rc.Do(t, http.MethodHead, path)
	if h.Status != 200 || h.Header.Get("Content-Length") != fmt.Sprint(len(cfgBytes)) {
		t.Fatalf("HEAD: %d %v", h.Status, h.Header)
	}
	if n := reg.Count("GET", "blob"); n != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", n)
	}

	// A lying upstream: a small blob whose bytes do not match is refused and not cached.
	reg2 := registrytest.New(t, registrytest.NoAuth)
	d := reg2.PushBlob(t, "team/app", []byte(`{"architecture":"amd64","os":"linux"}`))
	reg2.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", "4")
		_, _ = w.Write([]byte("evil"))
		return true
	})
	rc2 := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg2.URL)))
	r := rc2.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+d)
	if r.Status != 502 {
		t.Fatalf("lying blob: %d %s", r.Status, r.Body)
	}
	reg2.SetFault(nil)
	if r := rc2.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+d); r.Status != 200 || r.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("after the lie: %d %q", r.Status, r.Header.Get("X-Cache"))
	}
}

func TestBlobsLargeStreamedVerifiedWithRange(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	big := make([]byte, 24<<20)
	_, _ = rand.Read(big)
	d := reg.PushBlob(t, "team/app", big)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	path := "/v2/ghcr.io/team/app/blobs/" + d

	resp, err := rc.Client.Get(rc.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, big) {
		t.Fatalf("big blob: status %d, %d bytes, err %v", resp.StatusCode, len(got), err)
	}

	r := rc.Do(t, http.MethodGet, path, "Range", "bytes=100-199")
	if r.Status != 206 || !bytes.Equal(r.Body, big[100:200]) {
		t.Fatalf("range: %d, %d bytes", r.Status, len(r.Body))
	}
	h := rc.Do(t, http.MethodHead, path)
	if h.Status != 200 || h.Header.Get("Content-Length") != fmt.Sprint(len(big)) {
		t.Fatalf("HEAD big: %d %v", h.Status, h.Header)
	}

	// Upstream corrupts the stream: the client never gets the full length.
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || r.Header.Get("Range") != "" {
			return false
		}
		bad := append([]byte(nil), big...)
		bad[len(bad)-10] ^= 0xff
		w.Header().Set("Content-Length", fmt.Sprint(len(bad)))
		_, _ = w.Write(bad)
		return true
	})
	resp, err = rc.Client.Get(rc.URL + path)
	if err == nil {
		got, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil || len(got) >= len(big) {
			t.Fatalf("corrupt stream delivered %d of %d bytes without error", len(got), len(big))
		}
	}
}

func TestStreamedBlobMemoryBounded(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	big := make([]byte, 32<<20)
	_, _ = rand.Read(big)
	d := reg.PushBlob(t, "team/app", big)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := rc.Client.Get(rc.URL + "/v2/ghcr.io/team/app/blobs/" + d)
	if err != nil {
		t.Fatal(err, rc.Logs.String())
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if err != nil || n != int64(len(big)) {
		t.Fatalf("copied %d, err %v", n, err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated while streaming 32 MiB through regcache: %.1f MiB", float64(alloc)/(1<<20))
	if alloc > 16<<20 {
		t.Fatalf("streaming a 32 MiB blob allocated %d MiB: it is being buffered", alloc>>20)
	}
}

func TestDigestAPI(t *testing.T) {
	t.Parallel()
	hub := registrytest.New(t, registrytest.Bearer)
	lscr := registrytest.New(t, registrytest.Bearer)
	nginx := hub.PushImage(t, "library/nginx", "latest", types.DockerManifestSchema2)
	idx := lscr.PushIndex(t, "linuxserver/nginx", "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	single := lscr.PushImage(t, "linuxserver/single", "1.0", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("docker.io", hub.URL, "aliases: [hub]"), harness.Upstream("lscr.io", lscr.URL)))

	get := func(q string) (int, map[string]any) {
		r := rc.Do(t, http.MethodGet, "/api/v1/digest?"+q)
		var m map[string]any
		if err := json.Unmarshal(r.Body, &m); err != nil {
			t.Fatalf("%s: not JSON: %s", q, r.Body)
		}
		return r.Status, m
	}
	st, m := get("image=nginx")
	if st != 200 || m["image"] != "docker.io/library/nginx:latest" || m["digest"] != nginx.Digest || m["registry"] != "docker.io" ||
		m["repository"] != "library/nginx" || m["tag"] != "latest" || m["cache"] != "MISS" || m["fetchedAt"] == nil {
		t.Fatalf("nginx: %d %v", st, m)
	}
	if _, ok := m["platform"]; ok {
		t.Fatal("platform fields without a platform asked")
	}

	var idxBody struct {
		Manifests []struct {
			Digest   string
			Platform struct{ Architecture string }
		}
	}
	_ = json.Unmarshal(idx.Body, &idxBody)
	var armDigest string
	for _, c := range idxBody.Manifests {
		if c.Platform.Architecture == "arm64" {
			armDigest = c.Digest
		}
	}
	st, m = get("image=" + url.QueryEscape("lscr.io/linuxserver/nginx:latest"))
	if st != 200 || m["digest"] != idx.Digest || m["mediaType"] != string(types.OCIImageIndex) {
		t.Fatalf("index: %d %v", st, m)
	}
	lscr.ResetCounts()
	st, m = get("image=lscr.io/linuxserver/nginx:latest&platform=linux/arm64")
	if st != 200 || m["platform"] != "linux/arm64/v8" || m["platformDigest"] != armDigest { // the index's own words
		t.Fatalf("arm64: %d %v (want %s)", st, m, armDigest)
	}
	afterFirst := lscr.Count("GET", "manifest") + lscr.Count("HEAD", "manifest")
	st, m = get("image=lscr.io/linuxserver/nginx:latest&platform=linux/arm64/v8")
	if st != 200 || m["platformDigest"] != armDigest || lscr.Count("GET", "manifest")+lscr.Count("HEAD", "manifest") != afterFirst {
		t.Fatalf("cached platform lookup went upstream or changed: %d %v", st, m)
	}
	if st, m = get("image=lscr.io/linuxserver/nginx:latest&platform=linux/s390x"); st != 404 {
		t.Fatalf("absent platform: %d %v", st, m)
	}
	if st, m = get("image=lscr.io/linuxserver/single:1.0&platform=linux/amd64"); st != 200 || m["platformDigest"] != single.Digest {
		t.Fatalf("single-platform image: %d %v", st, m)
	}
	if st, m = get("image=lscr.io/linuxserver/nginx@" + idx.Digest); st != 200 || m["digest"] != idx.Digest {
		t.Fatalf("by digest: %d %v", st, m)
	}
	for q, want := range map[string]int{
		"image=quay.evil.example/x/y:1": 404, "image=": 400, "image=nginx/UPPER": 400, "image=UPPER/case": 404, "image=nginx:-bad": 400,
		"image=nginx&platform=linux/arm64/v8/extra": 400, "image=nginx&platform=%20": 400,
	} {
		if st, m := get(q); st != want || m["errors"] == nil {
			t.Fatalf("%s: %d %v, want %d with errors", q, st, m, want)
		}
	}

	// Batch: order kept, errors per image.
	body := `{"images":["nginx","lscr.io/linuxserver/nginx:latest","quay.evil.example/x:1","NOT VALID"],"platform":"linux/amd64"}`
	resp, err := rc.Client.Post(rc.URL+"/api/v1/digests", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var batch struct {
		Results []map[string]any `json:"results"`
	}
	if err := json.Unmarshal(raw, &batch); err != nil || len(batch.Results) != 4 {
		t.Fatalf("batch: %d %s", resp.StatusCode, raw)
	}
	if batch.Results[1]["image"] != "lscr.io/linuxserver/nginx:latest" || batch.Results[1]["platformDigest"] == nil {
		t.Fatalf("batch[1] = %v", batch.Results[1])
	}
	if batch.Results[2]["error"] == nil || batch.Results[3]["error"] == nil || batch.Results[3]["image"] != "NOT VALID" {
		t.Fatalf("batch errors = %v / %v", batch.Results[2], batch.Results[3])
	}
	for name, b := range map[string]string{
		"not JSON": "{nope", "no images": `{"images":[]}`, "bad platform": `{"images":["nginx"],"platform":"!!"}`,
		"10,000 images": `{"images":[` + strings.TrimSuffix(strings.Repeat(`"nginx",`, 10000), ",") + `]}`,
	} {
		resp, err := rc.Client.Post(rc.URL+"/api/v1/digests", "application/json", strings.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !bytes.Contains(raw, []byte(`"errors"`)) {
			t.Fatalf("%s: %d %s", name, resp.StatusCode, raw)
		}
	}
}
