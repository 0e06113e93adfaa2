package main

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

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
			if code := ceError(t, tc.name, rc.Do(t, "GET", path), "GET", 502); code != "MANIFEST_INVALID" {
				t.Fatalf("%s: code %s, want MANIFEST_INVALID", tc.name, code)
			}
		}
	}
	reg.SetFault(nil)
	ceExpect(t, "after the fault", rc.Do(t, "GET", path), "MISS", img, "GET")
}
