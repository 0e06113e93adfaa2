package main

// No open proxy, and read-only: only configured upstreams (and the token realms and
// redirect targets they name) are ever contacted, however a client names a host, and every
// method but GET and HEAD is refused.

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/internal/loopback"
	"regcache/upstream/registrytest"
)

// TestNoOpenProxy tries every way a client could name a host: ns=, a path prefix, the
// Host header, an absolute-URI request line, and upstream redirects. Only the configured
// upstream's own address is ever dialled.
func TestNoOpenProxy(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	dial := &loopback.Dialer{Allow: []string{reg.Host}}
	rc := startRegcacheWith(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL, "aliases: [gh]")), harness.Options{Dial: dial.DialContext, Resolver: dial})

	for _, path := range []string{
		"/v2/team/app/manifests/v1?ns=evil.example.com",
		"/v2/team/app/manifests/v1?ns=127.0.0.1:22",
		"/v2/team/app/manifests/v1?ns=169.254.169.254",
		"/v2/evil.example.com/team/app/manifests/v1",
		"/v2/169.254.169.254/latest/manifests/v1",
		"/v2/localhost:6379/x/manifests/v1",
		"/v2/" + reg.Host + "/team/app/manifests/v1", // the upstream's address is not its name
		"/v2/evil.example.com/team/app/tags/list",
		"/v2/evil.example.com/team/app/blobs/" + img.Digest,
		"/api/v1/digest?image=evil.example.com/x:1",
		"/api/v1/digest?image=169.254.169.254/latest:1",
	} {
		r := rc.Do(t, http.MethodGet, path)
		if r.Status != 404 && r.Status != 400 {
			t.Errorf("%s: %d %s, want a 404/400 registry error", path, r.Status, r.Body)
		}
	}
	// The Host header and an absolute-URI request line name no upstream either.
	for _, text := range []string{
		"GET /v2/team/app/manifests/v1 HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
		"GET http://evil.example.com/v2/team/app/manifests/v1 HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
		"GET http://169.254.169.254/v2/evil.example.com/x/manifests/v1 HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
	} {
		resp, body, err := harness.Send(t, rc.Addr, text)
		if err != nil {
			t.Fatalf("reading the answer to %q: %v", strings.SplitN(text, "\r\n", 2)[0], err)
		}
		if resp.StatusCode != 200 && resp.StatusCode != 404 {
			t.Errorf("%q: %s %.4096s", strings.SplitN(text, "\r\n", 2)[0], resp.Status, body)
		}
	}
	// Upstream redirects to other hosts: to a name, to the metadata service, to a
	// private address. Each is refused before any connection.
	for i, to := range []string{"http://evil.example.com/x", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1:5000/v2/"} {
		target := to
		fresh := reg.PushImage(t, "team/app", fmt.Sprintf("r%d", i), types.OCIManifestSchema1) // nothing cached
		reg.SetFault(registrytest.Once(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
			http.Redirect(w, r, target, http.StatusTemporaryRedirect)
			return true
		})))
		if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/manifests/"+fresh.Digest); r.Status < 400 {
			t.Errorf("redirect to %s: %d", to, r.Status)
		}
	}
	reg.SetFault(nil)
	if r := rc.Do(t, http.MethodGet, "/v2/gh/team/app/manifests/v1"); r.Status != 200 {
		t.Fatalf("the configured upstream no longer answers: %d %s", r.Status, r.Body)
	}
	// Internal literals are refused before the dialer; a redirect to a public name is
	// looked up (the test resolver answers nothing) and never dialled.
	for _, a := range dial.Refused() {
		if a != "dns:evil.example.com" {
			t.Fatalf("regcache tried to reach %s", a)
		}
	}
}

func TestBaseEndpointAndReadOnly(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	d := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1).Digest
	rc := startRegcache(t, harness.Config("", harness.Upstream("registry.test", reg.URL)))
	reg.ResetCounts()

	for _, path := range []string{"/v2/", "/v2"} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			// Without Authorization the ping is challenged (client auth off or not: clients
			// find the token realm this way; Diun takes 200 or 401, Renovate needs the
			// challenge); with any Authorization it answers 200.
			r := rc.Do(t, method, path)
			if r.Status != http.StatusUnauthorized || r.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("%s %s without Authorization: %d %v, want 401 with a challenge", method, path, r.Status, r.Header)
			}
			r = rc.Do(t, method, path, "Authorization", "Bearer Og==")
			if r.Status != http.StatusOK || r.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
				t.Fatalf("%s %s: %d %v", method, path, r.Status, r.Header)
			}
			if r.Header.Get("WWW-Authenticate") != "" {
				t.Fatalf("%s %s asks for credentials", method, path)
			}
		}
	}
	if r := rc.Do(t, http.MethodGet, "/v2/", "Authorization", "Bearer Og=="); string(r.Body) != "{}" || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /v2/ body %q type %q", r.Body, r.Header.Get("Content-Type"))
	}
	for _, method := range []string{http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch} {
		for _, path := range []string{
			"/v2/team/app/manifests/v1",
			"/v2/team/app/manifests/" + d,
			"/v2/team/app/blobs/" + d,
			"/v2/team/app/blobs/uploads/",
			"/v2/registry.test/team/app/manifests/v1",
			"/v2/team/app/manifests/v1?ns=registry.test",
			"/v2/",
		} {
			r := rc.Do(t, method, path)
			harness.ExpectErrorCode(t, method+" "+path, r, method, http.StatusMethodNotAllowed, "UNSUPPORTED")
			if allow := r.Header.Get("Allow"); allow != "GET, HEAD" {
				t.Fatalf("%s %s: Allow %q, want \"GET, HEAD\" (RFC 9110 §15.5.6)", method, path, allow)
			}
		}
	}
	harness.ExpectNoTraffic(t, "read-only methods", reg)
	// And the manifest is still there and unchanged.
	if r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1"); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
		t.Fatalf("after the refused writes: %d %s", r.Status, r.Header.Get("Docker-Content-Digest"))
	}
}
