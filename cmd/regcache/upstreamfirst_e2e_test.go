package main

// The fourth routing form, /<upstream>/v2/<repository>/... (Renovate's, for an http://
// registry URL with a path), answers exactly as /v2/<upstream>/<repository>/... does, and
// What's Up Docker's //v2/... exactly as /v2/....

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestRoutingUpstreamFirstForm(t *testing.T) {
	t.Parallel()
	hub := registrytest.New(t, registrytest.Bearer)
	ghcr := registrytest.New(t, registrytest.Bearer)
	hub.PushIndex(t, "library/alpine", "3.19", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	hub.PushTags(t, "library/alpine", []string{"3.18", "3.20", "3.21", "latest"})
	ghcr.PushImage(t, "owner/app", "v1", types.OCIManifestSchema1)
	cfg, _ := hub.ConfigOf(t, "library/alpine", "3.18")
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("docker.io", hub.URL, "aliases: [hub]"),
		harness.Upstream("ghcr.io", ghcr.URL),
	))

	same := func(method, want, got string, header ...string) harness.Response {
		t.Helper()
		a, b := rc.Do(t, method, want, header...), rc.Do(t, method, got, header...)
		if a.Status != b.Status || !bytes.Equal(a.Body, b.Body) {
			t.Fatalf("%s %s: %d %s; %s: %d %s", method, got, b.Status, b.Body, want, a.Status, a.Body)
		}
		for _, h := range []string{"Content-Type", "Docker-Content-Digest", "Content-Length", "WWW-Authenticate", "Docker-Distribution-API-Version"} {
			if a.Header.Get(h) != b.Header.Get(h) {
				t.Fatalf("%s %s: %s %q; %s: %q", method, got, h, b.Header.Get(h), want, a.Header.Get(h))
			}
		}
		return b
	}
	for i, p := range [][2]string{
		// The first seven are answered (200): both forms working, not both failing alike.
		{"/v2/hub/alpine/manifests/3.19", "/hub/v2/alpine/manifests/3.19"},
		{"/v2/hub/alpine/manifests/3.19", "/docker.io/v2/alpine/manifests/3.19"},
		{"/v2/hub/alpine/manifests/3.19", "/HUB/v2/library/alpine/manifests/3.19"},
		{"/v2/hub/alpine/manifests/3.19", "//v2/hub/alpine/manifests/3.19"},
		{"/v2/ghcr.io/owner/app/manifests/v1", "/ghcr.io/v2/owner/app/manifests/v1"},
		{"/v2/hub/alpine/blobs/" + cfg.String(), "/hub/v2/alpine/blobs/" + cfg.String()},
		{"/v2/hub/alpine/tags/list", "/hub/v2/alpine/tags/list"},
		{"/v2/hub/alpine/manifests/9.99", "/hub/v2/alpine/manifests/9.99"},         // unknown tag
		{"/v2/hub/Alpine/manifests/3.19", "/hub/v2/Alpine/manifests/3.19"},         // invalid name
		{"/v2/hub/alpine/manifests/-x", "/hub/v2/alpine/manifests/-x"},             // invalid tag
		{"/v2/nowhere.test/a/manifests/v1", "/nowhere.test/v2/a/manifests/v1"},     // not configured
		{"/v2/hub/alpine/referrers/" + cfg.String(), "/hub/v2/alpine/referrers/x"}, // no endpoint
		{"/v2/", "/hub/v2/"}, // the ping: 401 with the challenge
		{"/v2/", "/ghcr.io/v2/"},
		{"/v2", "/hub/v2"},
		{"/v2/", "//v2/"},
	} {
		for _, m := range []string{http.MethodHead, http.MethodGet} {
			if strings.Contains(p[1], "referrers") {
				a, b := rc.Do(t, m, p[0]), rc.Do(t, m, p[1])
				if a.Status != b.Status || a.Status != http.StatusNotFound {
					t.Fatalf("%s %s: %d, %s: %d", m, p[1], b.Status, p[0], a.Status)
				}
				continue
			}
			if r := same(m, p[0], p[1]); i < 7 && r.Status != http.StatusOK {
				t.Fatalf("%s %s: %d, want 200", m, p[1], r.Status)
			}
		}
	}
	// The doubled slash reached regcache as sent (the client did not clean the path).
	if !strings.Contains(rc.Logs.String(), `"path":"//v2/hub/alpine/manifests/3.19"`) {
		t.Fatal("no request logged with the path //v2/...: the test no longer sends it")
	}
	// The ping with a token, and a write, as on /v2/.
	if r := same(http.MethodGet, "/v2/", "/hub/v2/", "Authorization", "Bearer x"); r.Status != http.StatusOK {
		t.Fatalf("authorized ping: %d", r.Status)
	}
	if r := same(http.MethodDelete, "/v2/hub/alpine/manifests/3.19", "/hub/v2/alpine/manifests/3.19"); r.Status != http.StatusMethodNotAllowed {
		t.Fatalf("DELETE: %d", r.Status)
	}
	if r := rc.Do(t, http.MethodGet, "/nowhere.test/v2/"); r.Status != http.StatusNotFound || !strings.Contains(string(r.Body), "NAME_UNKNOWN") {
		t.Fatalf("ping of an unconfigured registry: %d %s", r.Status, r.Body)
	}
	// A first segment that is neither an upstream nor a host is no registry name at all.
	if r := rc.Do(t, http.MethodGet, "/nowhere/v2/"); r.Status != http.StatusNotFound || !strings.Contains(string(r.Body), "ENDPOINT_UNKNOWN") {
		t.Fatalf("ping under an unknown segment: %d %s", r.Status, r.Body)
	}

	// Pages: the same tags, each Link in the form the client used, followed to the end.
	for _, form := range []struct{ first, prefix string }{
		{"/v2/hub/alpine/tags/list?n=2", "/v2/hub/alpine/tags/list?"},
		{"/hub/v2/alpine/tags/list?n=2", "/hub/v2/alpine/tags/list?"},
		{"//v2/hub/alpine/tags/list?n=2", "/v2/hub/alpine/tags/list?"},
	} {
		var pages []string
		for next := form.first; next != ""; {
			r := rc.Do(t, http.MethodGet, next)
			if r.Status != http.StatusOK {
				t.Fatalf("%s: %d %s", next, r.Status, r.Body)
			}
			pages = append(pages, string(r.Body))
			next = ""
			if l := r.Header.Get("Link"); l != "" {
				next = strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
				if !strings.HasPrefix(next, form.prefix) {
					t.Fatalf("%s: Link %q not in the client's form %s", form.first, l, form.prefix)
				}
			}
		}
		if want := `{"name":"library/alpine","tags":["3.18","3.19"]}|{"name":"library/alpine","tags":["3.20","3.21"]}|{"name":"library/alpine","tags":["latest"]}`; strings.Join(pages, "|") != want {
			t.Fatalf("%s: pages %s", form.first, strings.Join(pages, "|"))
		}
	}
}

// With client auth on, /<upstream>/v2/ challenges and admits exactly as /v2/ does.
func TestRoutingUpstreamFirstFormClientAuth(t *testing.T) {
	t.Parallel()
	hub := registrytest.New(t, registrytest.Bearer)
	d := hub.PushImage(t, "library/alpine", "3.19", types.OCIManifestSchema1).Digest
	const user, pass = "renovate", "s3cret-for-renovate"
	rc := startRegcache(t, harness.Config("", harness.Upstream("docker.io", hub.URL, "aliases: [hub]"))+
		"auth:\n  htpasswd: "+writeHtpasswd(t, user, pass)+"\n")
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	for _, p := range [][2]string{{"/v2/", "/hub/v2/"}, {"/v2/hub/alpine/manifests/3.19", "/hub/v2/alpine/manifests/3.19"}} {
		a, b := rc.Do(t, http.MethodGet, p[0]), rc.Do(t, http.MethodGet, p[1])
		if a.Status != http.StatusUnauthorized || b.Status != a.Status || b.Header.Get("WWW-Authenticate") != a.Header.Get("WWW-Authenticate") || !bytes.Equal(a.Body, b.Body) {
			t.Fatalf("without credentials: %s %d %q, %s %d %q", p[1], b.Status, b.Header.Get("WWW-Authenticate"), p[0], a.Status, a.Header.Get("WWW-Authenticate"))
		}
		if r := rc.Do(t, http.MethodGet, p[1], "Authorization", basic); r.Status != http.StatusOK {
			t.Fatalf("%s with credentials: %d %s", p[1], r.Status, r.Body)
		}
	}
	// A token from the realm the challenge names, for the scope Renovate asks, admits too.
	tok := rc.Do(t, http.MethodGet, "/token?service=regcache&scope=repository:alpine:pull", "Authorization", basic)
	var body struct{ Token string }
	if err := json.Unmarshal(tok.Body, &body); err != nil || body.Token == "" {
		t.Fatalf("token: %d %s", tok.Status, tok.Body)
	}
	if r := rc.Do(t, http.MethodHead, "/hub/v2/alpine/manifests/3.19", "Authorization", "Bearer "+body.Token); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
		t.Fatalf("with the token: %d %s", r.Status, r.Header.Get("Docker-Content-Digest"))
	}
}
