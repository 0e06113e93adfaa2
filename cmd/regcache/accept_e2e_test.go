package main

// Accept is normalized upstream: every upstream request asks for all four manifest types,
// and a client's own Accept decides only whether it is handed the answer (by default it
// always is, with its real Content-Type; with strict_accept, as a registry would).

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

func TestAcceptUpstreamAlwaysFourTypesAndLenientByDefault(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	rec := harness.Record(reg)
	oci := reg.PushImage(t, "team/app", "oci", types.OCIManifestSchema1)
	idx := reg.PushIndex(t, "team/app", "idx", types.OCIImageIndex, "linux/amd64")
	docker := reg.PushImage(t, "team/app", "docker", types.DockerManifestSchema2)
	rc := startRegcache(t, harness.Config("", harness.Upstream("registry.test", reg.URL)))

	const watchtower = upstream.MediaTypeDockerManifest // an old client: no OCI, no lists
	for _, tc := range []struct {
		tag    string
		pushed registrytest.Pushed
	}{{"oci", oci}, {"idx", idx}, {"docker", docker}} {
		// HEAD by tag (upstream HEAD), GET by tag (upstream GET by digest), GET by digest.
		for _, step := range []struct{ method, ref string }{
			{http.MethodHead, tc.tag}, {http.MethodGet, tc.tag}, {http.MethodGet, tc.pushed.Digest},
		} {
			r := rc.Do(t, step.method, "/v2/team/app/manifests/"+step.ref, "Accept", watchtower)
			if r.Status != http.StatusOK {
				t.Fatalf("%s %s with Accept %s: %d %s", step.method, step.ref, watchtower, r.Status, r.Body)
			}
			// Lenient: the real type, whatever the client said it accepts.
			if ct := r.Header.Get("Content-Type"); ct != tc.pushed.MediaType {
				t.Fatalf("%s %s: Content-Type %s, want the manifest's own %s", step.method, step.ref, ct, tc.pushed.MediaType)
			}
			if r.Header.Get("Docker-Content-Digest") != tc.pushed.Digest {
				t.Fatalf("%s %s: digest %s", step.method, step.ref, r.Header.Get("Docker-Content-Digest"))
			}
			if step.method == http.MethodGet && string(r.Body) != string(tc.pushed.Body) {
				t.Fatalf("GET %s: body differs from upstream's bytes", step.ref)
			}
		}
	}
	// Clients with no Accept, or only a wildcard, change nothing upstream either.
	other := reg.PushImage(t, "team/other", "v1", types.OCIManifestSchema1)
	if r := rc.Do(t, http.MethodGet, "/v2/team/other/manifests/v1"); r.Status != http.StatusOK || r.Header.Get("Content-Type") != other.MediaType {
		t.Fatalf("no Accept: %d %s", r.Status, r.Header.Get("Content-Type"))
	}
	if r := rc.Do(t, http.MethodHead, "/v2/team/other/manifests/"+reg.PushImage(t, "team/other", "v2", types.DockerManifestSchema2).Digest, "Accept", "*/*"); r.Status != http.StatusOK {
		t.Fatalf("*/* by digest: %d", r.Status)
	}

	seen := rec.Manifests()
	if len(seen) < 8 {
		t.Fatalf("only %d manifest requests reached upstream: %+v", len(seen), seen)
	}
	methods := map[string]bool{}
	for _, s := range seen {
		harness.ExpectAllTypesAsked(t, s)
		methods[s.Method] = true
	}
	if !methods[http.MethodHead] || !methods[http.MethodGet] {
		t.Fatalf("want both HEAD and GET checked upstream, saw %v", methods)
	}
}

func TestAcceptStrict(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	oci := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	idx := reg.PushIndex(t, "team/app", "multi", types.OCIImageIndex, "linux/amd64", "linux/arm64")
	rc := startRegcache(t, harness.Config("", harness.Upstream("registry.test", reg.URL, "strict_accept: true")))
	const (
		dockerOnly = upstream.MediaTypeDockerManifest
		ociMsg     = "OCI manifest found, but accept header does not support OCI manifests"
	)
	refs := []string{"v1", oci.Digest}

	for _, ref := range refs {
		path := "/v2/team/app/manifests/" + ref
		r := rc.Do(t, http.MethodGet, path, "Accept", dockerOnly)
		harness.ExpectErrorCode(t, "GET "+ref+" docker-only", r, http.MethodGet, http.StatusNotFound, "MANIFEST_UNKNOWN")
		if msg := harness.ErrorOf(t, r).Message; msg != ociMsg {
			t.Fatalf("message %q, want %q", msg, ociMsg)
		}
		harness.ExpectErrorCode(t, "HEAD "+ref+" docker-only", rc.Do(t, http.MethodHead, path, "Accept", dockerOnly), http.MethodHead, http.StatusNotFound, "MANIFEST_UNKNOWN")
		// Several Accept lines, as Docker sends them, none of them OCI.
		harness.ExpectErrorCode(t, "two lines without OCI", rc.Do(t, http.MethodGet, path, "Accept", dockerOnly, "Accept", upstream.MediaTypeDockerList),
			http.MethodGet, http.StatusNotFound, "MANIFEST_UNKNOWN")

		for _, accept := range [][]string{
			{"Accept", "*/*"},
			{"Accept", upstream.MediaTypeOCIManifest},
			{"Accept", dockerOnly + ", " + upstream.MediaTypeOCIManifest + ";q=0.5"},
			{"Accept", dockerOnly, "Accept", upstream.MediaTypeDockerList, "Accept", upstream.MediaTypeOCIManifest}, // the last line admits
			{"Accept", dockerOnly, "Accept", "*/*"},
			{}, // no Accept at all
		} {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				r := rc.Do(t, method, path, accept...)
				if r.Status != http.StatusOK || r.Header.Get("Content-Type") != oci.MediaType || r.Header.Get("Docker-Content-Digest") != oci.Digest {
					t.Fatalf("%s %s with %q: %d %s %s", method, ref, accept, r.Status, r.Header.Get("Content-Type"), r.Body)
				}
			}
		}
	}
	// An index wants its own type named.
	harness.ExpectErrorCode(t, "index, manifest types only", rc.Do(t, http.MethodGet, "/v2/team/app/manifests/multi", "Accept", dockerOnly, "Accept", upstream.MediaTypeOCIManifest),
		http.MethodGet, http.StatusNotFound, "MANIFEST_UNKNOWN")
	if r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/multi", "Accept", dockerOnly, "Accept", upstream.MediaTypeOCIIndex); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != idx.Digest {
		t.Fatalf("index with its type accepted: %d", r.Status)
	}
	// A refusal is about the client, not the manifest: the manifest is cached all the same,
	// so dozens of refused and served requests cost at most two upstream requests per tag.
	if n := reg.Count(http.MethodGet, "manifest") + reg.Count(http.MethodHead, "manifest"); n > 4 {
		t.Fatalf("%d manifest requests upstream for 2 tags", n)
	}
}
