package harness

// Manifest answers: the Accept real clients send, and the check that an answer is
// upstream's manifest byte for byte.

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"regcache/upstream/registrytest"
)

// ManifestTypes are the four manifest media types every update checker meets: Docker
// list, OCI index, Docker v2, OCI manifest.
var ManifestTypes = []string{
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
}

// AcceptAll is the Accept set real clients send: the four manifest types.
var AcceptAll = strings.Join(ManifestTypes, ", ")

// ExpectManifest checks a successful answer to method against what upstream holds: 200,
// p's digest, type and length, X-Cache (unless xcache is ""), and p's body for a GET
// (none for a HEAD).
func ExpectManifest(t testing.TB, what string, r Response, xcache string, p registrytest.Pushed, method string) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("%s: status %d, want 200: %s", what, r.Status, r.Body)
	}
	if got := r.Header.Get("Docker-Content-Digest"); got != p.Digest {
		t.Fatalf("%s: Docker-Content-Digest %s, want %s", what, got, p.Digest)
	}
	if got := r.Header.Get("Content-Type"); got != p.MediaType {
		t.Fatalf("%s: Content-Type %q, want %q", what, got, p.MediaType)
	}
	if got := r.Header.Get("Content-Length"); got != strconv.Itoa(len(p.Body)) {
		t.Fatalf("%s: Content-Length %q, want %d", what, got, len(p.Body))
	}
	if xcache != "" && r.Header.Get("X-Cache") != xcache {
		t.Fatalf("%s: X-Cache %q, want %q", what, r.Header.Get("X-Cache"), xcache)
	}
	if method == http.MethodGet && string(r.Body) != string(p.Body) {
		t.Fatalf("%s: body (%d bytes) differs from upstream's (%d bytes)", what, len(r.Body), len(p.Body))
	}
	if method == http.MethodHead && len(r.Body) != 0 {
		t.Fatalf("%s: HEAD answered a body", what)
	}
}

// PlatformDigests maps each architecture of the pushed index p to its manifest's digest.
func PlatformDigests(t testing.TB, p registrytest.Pushed) map[string]string {
	t.Helper()
	var idx struct {
		Manifests []struct {
			Digest   string `json:"digest"`
			Platform struct {
				Architecture string `json:"architecture"`
			} `json:"platform"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(p.Body, &idx); err != nil || len(idx.Manifests) == 0 {
		t.Fatalf("not an index: %v %s", err, p.Body)
	}
	m := map[string]string{}
	for _, c := range idx.Manifests {
		m[c.Platform.Architecture] = c.Digest
	}
	return m
}
