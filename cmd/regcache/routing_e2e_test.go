package main

// Routing: the /v2/ ways a client names an upstream (a path prefix, containerd's ?ns=, or
// the default upstream; the fourth, /<upstream>/v2/, is upstreamfirst_e2e_test.go's), Docker Hub's library/ in each, and the names and references
// refused before any registry is asked.

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestRoutingThreeForms(t *testing.T) {
	t.Parallel()
	def := registrytest.New(t, registrytest.Bearer)
	hub := registrytest.New(t, registrytest.Bearer)
	quay := registrytest.New(t, registrytest.NoAuth)
	dDef := def.PushImage(t, "team/app", "v1", types.OCIManifestSchema1).Digest
	dHub := hub.PushImage(t, "team/app", "v1", types.OCIManifestSchema1).Digest
	dQuay := quay.PushImage(t, "team/app", "v1", types.DockerManifestSchema2).Digest
	dQuayOne := quay.PushImage(t, "app", "v1", types.DockerManifestSchema2).Digest
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("registry.test", def.URL),
		harness.Upstream("docker.io", hub.URL, "aliases: [hub]"),
		harness.Upstream("quay.test:5000", quay.URL, "aliases: [q]"),
	))

	for _, tc := range []struct {
		path, want string
		reg        *registrytest.Registry
	}{
		// default upstream
		{"/v2/team/app/manifests/v1", dDef, def},
		// path prefix by name, alias, any case, host:port
		{"/v2/registry.test/team/app/manifests/v1", dDef, def},
		{"/v2/docker.io/team/app/manifests/v1", dHub, hub},
		{"/v2/hub/team/app/manifests/v1", dHub, hub},
		{"/v2/DOCKER.IO/team/app/manifests/v1", dHub, hub},
		{"/v2/quay.test:5000/team/app/manifests/v1", dQuay, quay},
		{"/v2/q/team/app/manifests/v1", dQuay, quay},
		{"/v2/q/app/manifests/v1", dQuayOne, quay}, // no library/ off Docker Hub
		// containerd's ns=, by name or alias
		{"/v2/team/app/manifests/v1?ns=docker.io", dHub, hub},
		{"/v2/team/app/manifests/v1?ns=hub", dHub, hub},
		{"/v2/team/app/manifests/v1?ns=quay.test:5000", dQuay, quay},
		{"/v2/team/app/manifests/v1?ns=Quay.Test:5000", dQuay, quay},
		{"/v2/team/app/manifests/v1?ns=registry.test", dDef, def},
		{"/v2/app/manifests/v1?ns=q", dQuayOne, quay},
	} {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			before := tc.reg.Total()
			r := rc.Do(t, method, tc.path)
			if r.Status != http.StatusOK {
				t.Fatalf("%s %s: %d %s", method, tc.path, r.Status, r.Body)
			}
			if got := r.Header.Get("Docker-Content-Digest"); got != tc.want {
				t.Fatalf("%s %s: digest %s, want %s: routed to the wrong upstream", method, tc.path, got, tc.want)
			}
			if r.Header.Get("X-Cache") == "MISS" && tc.reg.Total() == before {
				t.Fatalf("%s %s: a MISS that did not reach the expected registry", method, tc.path)
			}
		}
	}
	// Each registry was asked only for what lives on it.
	for name, reg := range map[string]*registrytest.Registry{"default": def, "hub": hub, "quay": quay} {
		if reg.Count(http.MethodHead, "manifest")+reg.Count(http.MethodGet, "manifest") == 0 {
			t.Errorf("%s registry never reached", name)
		}
	}
}

func TestRoutingDockerHubAddsLibraryInEveryForm(t *testing.T) {
	t.Parallel()
	hub := registrytest.New(t, registrytest.Bearer)
	rec := harness.Record(hub)
	forms := []string{
		"/v2/nginx/manifests/t0",              // default upstream (Docker daemon registry-mirrors)
		"/v2/library/nginx/manifests/t1",      // already qualified: no library/library/
		"/v2/docker.io/nginx/manifests/t2",    // path prefix by name
		"/v2/hub/nginx/manifests/t3",          // Renovate-style alias, no library/
		"/v2/nginx/manifests/t4?ns=docker.io", // containerd
		"/v2/nginx/manifests/t5?ns=hub",       // containerd with the alias
		"/v2/docker.io/library/nginx/manifests/t6",
	}
	digests := map[string]string{}
	for i := range forms {
		tag := fmt.Sprintf("t%d", i)
		digests[tag] = hub.PushImage(t, "library/nginx", tag, types.DockerManifestSchema2).Digest
	}
	rc := startRegcache(t, harness.Config("", harness.Upstream("docker.io", hub.URL, "aliases: [hub]")))
	for i, path := range forms {
		r := rc.Do(t, http.MethodGet, path)
		if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != digests[fmt.Sprintf("t%d", i)] {
			t.Fatalf("GET %s: %d %s %s", path, r.Status, r.Header.Get("Docker-Content-Digest"), r.Body)
		}
	}
	seen := rec.Manifests()
	if len(seen) != len(forms) {
		t.Fatalf("%d manifest requests upstream for %d lookups: %+v", len(seen), len(forms), seen)
	}
	for _, s := range seen {
		if !strings.HasPrefix(s.Path, "/v2/library/nginx/manifests/t") {
			t.Errorf("upstream was asked for %s %s, want /v2/library/nginx/...", s.Method, s.Path)
		}
	}
}

func TestRoutingRefusesUnknownRegistries(t *testing.T) {
	t.Parallel()
	def := registrytest.New(t, registrytest.NoAuth)
	hub := registrytest.New(t, registrytest.NoAuth)
	def.PushImage(t, "foo", "latest", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("registry.test", def.URL),
		harness.Upstream("docker.io", hub.URL, "aliases: [hub]")))
	for _, path := range []string{
		"/v2/foo/manifests/latest?ns=evil.example.com",
		"/v2/library/foo/manifests/latest?ns=localhost:1234",
		"/v2/foo/manifests/latest?ns=" + def.Host, // the upstream's address is not one of its names
		"/v2/evil.example.com/foo/manifests/latest",
		"/v2/localhost:1234/foo/manifests/latest",
		"/v2/localhost/foo/manifests/latest",
		"/v2/169.254.169.254/latest/manifests/latest",
		"/v2/" + def.Host + "/foo/manifests/latest",
		"/v2/[::1]:5000/foo/manifests/latest",
		"/v2/evil.example.com/foo/blobs/sha256:" + strings.Repeat("a", 64),
		"/v2/evil.example.com/foo/tags/list",
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			harness.ExpectErrorCode(t, method+" "+path, rc.Raw(t, method, path), method, http.StatusNotFound, "NAME_UNKNOWN")
		}
	}
	harness.ExpectNoTraffic(t, "unknown registries", def, hub)
}

func TestRoutingRejectsInvalidNamesAndReferences(t *testing.T) {
	t.Parallel()
	def := registrytest.New(t, registrytest.NoAuth)
	other := registrytest.New(t, registrytest.NoAuth)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("registry.test", def.URL),
		harness.Upstream("other.test", other.URL, "aliases: [o]")))
	for _, tc := range []struct{ path, code string }{
		{"/v2/Library/Nginx/manifests/latest", "NAME_INVALID"},
		{"/v2/library/NGINX/manifests/latest?ns=other.test", "NAME_INVALID"},
		{"/v2/o/Team/app/manifests/latest", "NAME_INVALID"},
		{"/v2/../manifests/latest", "NAME_INVALID"},
		{"/v2/foo/../bar/manifests/latest", "NAME_INVALID"},
		{"/v2/other.test/../../v2/x/manifests/latest", "NAME_INVALID"},
		{"/v2/foo%2fbar/manifests/latest", "NAME_INVALID"},
		{"/v2/foo%2Fbar/manifests/latest", "NAME_INVALID"},
		{"/v2/%2e%2e/foo/manifests/latest", "NAME_INVALID"},
		{"/v2/o/%2E%2E/manifests/latest", "NAME_INVALID"},
		{"/v2/foo%5cbar/manifests/latest", "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a", 256) + "/manifests/latest", "NAME_INVALID"},
		{"/v2/o/" + strings.Repeat("b", 256) + "/manifests/latest", "NAME_INVALID"},
		{"/v2/foo/manifests/-bad", "TAG_INVALID"},
		{"/v2/foo/manifests/" + strings.Repeat("t", 129), "TAG_INVALID"},
		{"/v2/foo/manifests/sha256:zzz", "DIGEST_INVALID"},
		{"/v2/foo/manifests/sha256:" + strings.Repeat("A", 64), "DIGEST_INVALID"},
		{"/v2/foo/blobs/latest", "DIGEST_INVALID"},
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			harness.ExpectErrorCode(t, method+" "+tc.path, rc.Raw(t, method, tc.path), method, http.StatusBadRequest, tc.code)
		}
	}
	// The longest valid name and tag still route.
	def.PushImage(t, strings.Repeat("n", 255), strings.Repeat("T", 128), types.OCIManifestSchema1)
	if r := rc.Do(t, http.MethodHead, "/v2/"+strings.Repeat("n", 255)+"/manifests/"+strings.Repeat("T", 128)); r.Status != http.StatusOK {
		t.Fatalf("255-character name, 128-character tag: %d", r.Status)
	}
	def.ResetCounts()
	harness.ExpectNoTraffic(t, "invalid names", def, other)
}
