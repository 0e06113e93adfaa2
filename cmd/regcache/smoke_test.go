package main

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/configs"
	"regcache/internal/harness"
	"regcache/proxy"
	"regcache/upstream/registrytest"
)

func TestSmokeManifestThroughBearerUpstream(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	idx := reg.PushIndex(t, "linuxserver/nginx", "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	rc := startRegcache(t, harness.Config("", harness.Upstream("lscr.io", reg.URL)))
	reg.ResetCounts()

	r := rc.Do(t, http.MethodGet, "/v2/lscr.io/linuxserver/nginx/manifests/latest")
	if r.Status != 200 {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	if got := r.Header.Get("Docker-Content-Digest"); got != idx.Digest {
		t.Fatalf("digest %s, want %s", got, idx.Digest)
	}
	if !bytes.Equal(r.Body, idx.Body) {
		t.Fatal("body differs from upstream's")
	}
	if r.Header.Get("X-Cache") != "MISS" || r.Header.Get("Content-Type") != string(types.OCIImageIndex) {
		t.Fatalf("headers %v", r.Header)
	}
	h := rc.Do(t, http.MethodHead, "/v2/lscr.io/linuxserver/nginx/manifests/latest")
	if h.Status != 200 || h.Header.Get("X-Cache") != "HIT" || h.Header.Get("Content-Length") == "0" {
		t.Fatalf("HEAD: %d %v", h.Status, h.Header)
	}
	if reg.Count("GET", "manifest") != 1 || reg.Count("HEAD", "manifest") != 0 {
		t.Fatalf("upstream GET %d HEAD %d", reg.Count("GET", "manifest"), reg.Count("HEAD", "manifest"))
	}
	// One token for the repository's pull scope, reused by every later request.
	if n := reg.Count("GET", "token"); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

// The server: defaults are proxy's (configs fills a file's gaps with them); limits must
// carry each to its own proxy.Limits field.
func TestServerDefaultsAgree(t *testing.T) {
	cfg, err := configs.Parse([]byte("upstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := limits(&cfg.Server)
	want := proxy.Limits{ReadTimeout: proxy.DefaultReadTimeout, WriteTimeout: proxy.DefaultWriteTimeout, IdleTimeout: proxy.DefaultIdleTimeout,
		MaxHeaderSize: proxy.DefaultMaxHeaderSize, MaxRequestBody: proxy.DefaultMaxRequestBody}
	if got != want {
		t.Fatalf("config defaults %+v, proxy defaults %+v", got, want)
	}
}
