package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// A client HEAD on a blob costs an upstream HEAD, never a GET; a large blob's size is
// remembered, so only its first GET costs more than the stream itself.
func TestBlobHeadAndLargeBlobEconomy(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	small := reg.PushBlob(t, "team/app", []byte(`{"os":"linux","architecture":"amd64"}`))
	bigData := make([]byte, 3<<20)
	_, _ = rand.Read(bigData)
	big := reg.PushBlob(t, "team/app", bigData)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	reg.ResetCounts()

	h := rc.Do(t, http.MethodHead, "/v2/ghcr.io/team/app/blobs/"+small)
	if h.Status != 200 || h.Header.Get("Content-Length") != "37" {
		t.Fatalf("HEAD small: %d %v", h.Status, h.Header)
	}
	if reg.Count("GET", "blob") != 0 || reg.Count("HEAD", "blob") != 1 {
		t.Fatalf("HEAD cost GET %d HEAD %d, want 0 and 1", reg.Count("GET", "blob"), reg.Count("HEAD", "blob"))
	}
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+small); r.Status != 200 || r.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("GET small after HEAD: %d %q", r.Status, r.Header.Get("X-Cache"))
	}
	reg.ResetCounts()
	for i := 0; i < 3; i++ {
		r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+big)
		if r.Status != 200 || !bytes.Equal(r.Body, bigData) {
			t.Fatalf("GET big %d: %d, %d bytes", i, r.Status, len(r.Body))
		}
	}
	// First request: one aborted read to learn it is large, one stream; then one stream each.
	if n := reg.Count("GET", "blob"); n != 4 {
		t.Fatalf("3 large-blob GETs cost %d upstream GETs, want 4", n)
	}
}

// A blob 404 must not poison the manifest with the same digest, nor the other way round.
func TestBlobAndManifestNegativeCacheApart(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  negative_ttl: 1m\n", harness.Upstream("ghcr.io", reg.URL)))
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+img.Digest); r.Status != 404 {
		t.Fatalf("manifest digest as a blob: %d", r.Status)
	}
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/manifests/"+img.Digest); r.Status != 200 {
		t.Fatalf("manifest after a blob 404 of the same digest: %d %s", r.Status, r.Body)
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

// An upstream that sends part of a blob and then stalls is cut after its timeout; the
// client's transfer ends instead of hanging.
func TestStalledBlobStreamEnds(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	data := make([]byte, 3<<20)
	_, _ = rand.Read(data)
	d := reg.PushBlob(t, "team/app", data)
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		_, _ = w.Write(data[:64<<10])
		w.(http.Flusher).Flush()
		select {
		case <-stall:
		case <-r.Context().Done():
		}
		return true
	})
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL, "timeout: 1s")))
	start := time.Now()
	resp, err := rc.Client.Get(rc.URL + "/v2/ghcr.io/team/app/blobs/" + d)
	if err == nil {
		n, rerr := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if rerr == nil && n == int64(len(data)) {
			t.Fatal("a stalled upstream produced a complete blob")
		}
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("the stalled transfer took %s to end; the upstream timeout is 1s", took)
	}
}

// A large-blob stream that fails before its first body byte (upstream sends its headers,
// then resets or stalls) gets a registry error with a status, not a 200 cut short: the
// status line waits for the first byte.
func TestBlobStreamFailsBeforeFirstByte(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	bigData := make([]byte, 3<<20)
	_, _ = rand.Read(bigData)
	big := reg.PushBlob(t, "team/app", bigData)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL, "timeout: 500ms")))
	headersThen := func(after func(http.ResponseWriter)) registrytest.Fault {
		return registrytest.OnMethod(http.MethodGet, func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/blobs/") {
				return false
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(bigData)))
			w.Header().Set("Docker-Content-Digest", big)
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			after(w)
			return true
		})
	}
	for _, tc := range []struct {
		name   string
		fault  registrytest.Fault
		status int
	}{
		{"reset", headersThen(func(w http.ResponseWriter) {
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
		}), http.StatusBadGateway},
		{"stall past the timeout", headersThen(func(http.ResponseWriter) { time.Sleep(1500 * time.Millisecond) }), http.StatusGatewayTimeout},
	} {
		reg.SetFault(tc.fault)
		r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+big)
		if r.Status != tc.status || !strings.Contains(string(r.Body), `"code":"UNAVAILABLE"`) {
			t.Fatalf("%s before the first byte: %d %.200s; want %d with a registry error", tc.name, r.Status, r.Body, tc.status)
		}
	}
	reg.SetFault(nil)
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+big); r.Status != 200 || !bytes.Equal(r.Body, bigData) {
		t.Fatalf("after upstream recovered: %d, %d bytes", r.Status, len(r.Body))
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
