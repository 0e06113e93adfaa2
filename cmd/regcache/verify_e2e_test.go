package main

// Nothing unverified is served or cached: a manifest body that does not match the digest
// upstream claims (or the digest asked for), one over the 4 MiB limit, or one that is no
// manifest at all is refused (502 MANIFEST_INVALID), and nothing of it is kept.

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// An upstream whose body does not match the digest it claims (or the digest asked
// for) is refused with MANIFEST_INVALID, and nothing of it is cached.
func TestLyingUpstream(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "lie/app"
	truth := reg.PushImage(t, repo, "t", types.OCIManifestSchema1)
	byDigest := reg.PushImage(t, repo, "d", types.DockerManifestSchema2)
	other := reg.PushImage(t, "lie/other", "x", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	// By tag: the body is another manifest, the header claims the real digest.
	up.Set(registrytest.OnManifests(registrytest.Serve(truth.MediaType, truth.Digest, other.Body)))
	for i := 1; i <= 2; i++ {
		up.Reset()
		r := rc.Do(t, "GET", path("t"))
		if code := harness.ExpectError(t, "lying GET by tag", r, "GET", 502); code != "MANIFEST_INVALID" {
			t.Fatalf("lying GET by tag: code %s", code)
		}
		// Nothing cached, nothing remembered: every attempt asks upstream again.
		up.ExpectManifests(t, "lying GET by tag #"+strconv.Itoa(i), harness.ManifestRequest("GET", repo, "t"))
	}
	up.Set(nil)
	up.Reset()
	harness.ExpectManifest(t, "GET by tag after the lie", rc.Do(t, "GET", path("t")), "MISS", truth, "GET")
	up.ExpectManifests(t, "GET by tag after the lie", harness.ManifestRequest("GET", repo, "t"))
	// Nor was the lying body kept under its own digest: this repository upstream does not
	// have it, so the answer must come from upstream, and be a 404.
	up.Reset()
	harness.ExpectError(t, "lied-about digest", rc.Do(t, "GET", path(other.Digest)), "GET", 404)
	up.ExpectManifests(t, "lied-about digest", harness.ManifestRequest("GET", repo, other.Digest))

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
		up.Set(registrytest.OnManifests(tc.fault))
		up.Reset()
		r := rc.Do(t, tc.method, path(byDigest.Digest))
		if code := harness.ExpectError(t, "by digest: "+tc.name, r, tc.method, 502); tc.method == "GET" && code != "MANIFEST_INVALID" {
			t.Fatalf("by digest, %s: code %s", tc.name, code)
		}
		up.ExpectManifests(t, "by digest: "+tc.name, harness.ManifestRequest(tc.method, repo, byDigest.Digest))
	}
	up.Set(nil)
	up.Reset()
	harness.ExpectManifest(t, "GET by digest after the lies", rc.Do(t, "GET", path(byDigest.Digest)), "MISS", byDigest, "GET")
	up.ExpectManifests(t, "GET by digest after the lies", harness.ManifestRequest("GET", repo, byDigest.Digest))
}

// A manifest over the 4 MiB limit is refused, with or without Content-Length, and
// nothing of it is cached.
func TestOversizedManifest(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "big/app"
	truth := reg.PushImage(t, repo, "t", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	up := harness.Record(reg)
	path := func(ref string) string { return "/v2/reg.test/" + repo + "/manifests/" + ref }

	big := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":"` +
		strings.Repeat("a", 6<<20) + `"}}`)
	bigDigest := digest.FromBytes(big).String()
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
		up.Set(registrytest.OnManifests(tc.fault))
		for _, req := range []struct{ method, ref string }{{"GET", "t"}, {"GET", bigDigest}, {"HEAD", bigDigest}} {
			if tc.name == "chunked" && req.method == "HEAD" {
				continue // without a length a HEAD says nothing about size; the GET fallback is covered above
			}
			what := tc.name + ": " + req.method + " " + req.ref
			up.Reset()
			r := rc.Do(t, req.method, path(req.ref))
			if code := harness.ExpectError(t, what, r, req.method, 502); req.method == "GET" && code != "MANIFEST_INVALID" {
				t.Fatalf("%s: code %s", what, code)
			}
			up.ExpectManifests(t, what, harness.ManifestRequest(req.method, repo, req.ref))
		}
	}
	// Nothing was cached: the tag resolves to the real manifest, and the big digest is
	// asked upstream again (which, honest now, does not have it).
	up.Set(nil)
	up.Reset()
	harness.ExpectManifest(t, "GET after the oversized answers", rc.Do(t, "GET", path("t")), "MISS", truth, "GET")
	r := rc.Do(t, "GET", path(bigDigest))
	if code := harness.ExpectError(t, "big digest after the fault", r, "GET", 404); code != "MANIFEST_UNKNOWN" {
		t.Fatalf("big digest after the fault: code %s", code)
	}
	up.ExpectManifests(t, "after the oversized answers", harness.ManifestRequest("GET", repo, "t"), harness.ManifestRequest("GET", repo, bigDigest))
}

// TestNotAManifestIs502: a manifest body of null, or one whose mediaType contradicts its
// Content-Type, is 502 MANIFEST_INVALID every time it is asked (nothing kept), and the
// real manifest is served once upstream sends it.
func TestNotAManifestIs502(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "odd/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("reg.test", reg.URL)))
	const path = "/v2/reg.test/odd/app/manifests/v1"
	for _, tc := range []struct {
		name, contentType string
		body              []byte
	}{
		{"null", img.MediaType, []byte("null")},
		{"mediaType contradicts Content-Type", "application/vnd.docker.distribution.manifest.v2+json", img.Body},
	} {
		reg.SetFault(registrytest.OnManifests(registrytest.Serve(tc.contentType, digest.FromBytes(tc.body).String(), tc.body)))
		for range 2 {
			if code := harness.ExpectError(t, tc.name, rc.Do(t, "GET", path), "GET", 502); code != "MANIFEST_INVALID" {
				t.Fatalf("%s: code %s, want MANIFEST_INVALID", tc.name, code)
			}
		}
	}
	reg.SetFault(nil)
	harness.ExpectManifest(t, "after the fault", rc.Do(t, "GET", path), "MISS", img, "GET")
}
