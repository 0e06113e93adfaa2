package main

// The digest API (/api/v1/digest?image=...&platform=..., and the batch form): a tag's
// digest, a platform's own manifest digest from an index, Docker Hub's names as the /v2/
// routes take them, and the input it refuses.

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

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

	armDigest := harness.PlatformDigests(t, idx)["arm64"]
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

// The digest API adds library/ for every Docker Hub name, as the /v2/ routes do.
func TestDigestAPIDockerHubAliases(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "library/nginx", "latest", types.DockerManifestSchema2)
	rc := startRegcache(t, harness.Config("", harness.Upstream("docker.io", reg.URL, "aliases: [hub, registry-1.docker.io]")))
	for _, image := range []string{"nginx", "docker.io/nginx", "registry-1.docker.io/nginx", "registry-1.docker.io/library/nginx:latest"} {
		r := rc.Do(t, http.MethodGet, "/api/v1/digest?image="+image)
		var m map[string]any
		_ = json.Unmarshal(r.Body, &m)
		if r.Status != 200 || m["digest"] != img.Digest || m["repository"] != "library/nginx" {
			t.Fatalf("%s: %d %s", image, r.Status, r.Body)
		}
	}
}

// Found by FuzzPickPlatform: containerd's matcher lists every lower variant of arm and
// amd64 as compatible, one entry each, so linux/arm/v66666611 cost a minute of CPU and
// gigabytes per request. Out-of-range variants are refused before matching.
func TestDigestAPIRefusesHugePlatformVariants(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushIndex(t, "team/app", "v1", types.OCIImageIndex, "linux/amd64", "linux/arm/v7")
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	for _, pl := range []string{"linux/arm/v66666611", "linux/arm/66666611", "linux/amd64/v999999999", "linux/arm64/v10.1"} {
		r := rc.Do(t, http.MethodGet, "/api/v1/digest?image=ghcr.io/team/app:v1&platform="+pl)
		if r.Status != 400 || !strings.Contains(string(r.Body), "PLATFORM_INVALID") {
			t.Fatalf("platform %s: %d %s, want 400 PLATFORM_INVALID", pl, r.Status, r.Body)
		}
		req, _ := http.NewRequest(http.MethodPost, rc.URL+"/api/v1/digests",
			strings.NewReader(`{"images":["ghcr.io/team/app:v1"],"platform":"`+pl+`"}`))
		resp, err := rc.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "PLATFORM_INVALID") {
			t.Fatalf("batch, platform %s: %d %s, want 400 PLATFORM_INVALID", pl, resp.StatusCode, body)
		}
	}
	for _, pl := range []string{"linux/arm/v7", "linux/amd64"} {
		r := rc.Do(t, http.MethodGet, "/api/v1/digest?image=ghcr.io/team/app:v1&platform="+pl)
		if r.Status != 200 || !strings.Contains(string(r.Body), "platformDigest") {
			t.Fatalf("platform %s: %d %s, want 200 with a platform digest", pl, r.Status, r.Body)
		}
	}
}
