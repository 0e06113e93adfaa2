package main

// Upstream auth: regcache authenticates to each upstream as it asks (anonymous Bearer
// tokens like ghcr and Docker Hub, a token endpoint that wants Basic credentials, plain
// Basic), reuses what it was given, and tells an upstream's refusal of an image (403
// DENIED) from its refusal of regcache's own credentials (an outage: stale served, 502
// UPSTREAM_FAILED, nothing remembered).

import (
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestAuthBearerAnonymousReusesToken(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const n = 6
	var digests []string
	for i := 0; i < n; i++ {
		digests = append(digests, reg.PushImage(t, "team/app", fmt.Sprintf("v%d", i), types.OCIManifestSchema1).Digest)
	}
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.test", reg.URL)))
	var tr harness.Transcript
	for i := 0; i < n; i++ {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			r := tr.Add(rc.Do(t, method, fmt.Sprintf("/v2/team/app/manifests/v%d", i)))
			if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != digests[i] {
				t.Fatalf("%s v%d: %d %s", method, i, r.Status, r.Body)
			}
		}
	}
	if got := reg.Count(http.MethodGet, "token"); got != 1 {
		t.Fatalf("%d manifests in one repository cost %d token requests, want 1", n, got)
	}
	// Every manifest request upstream went out with the token; none paid a 401 round trip.
	if got, want := reg.Count(http.MethodHead, "manifest")+reg.Count(http.MethodGet, "manifest"), 2*n; got != want {
		t.Fatalf("%d manifest requests upstream, want %d", got, want)
	}
	reg.PushImage(t, "team/other", "v1", types.OCIManifestSchema1)
	if r := tr.Add(rc.Do(t, http.MethodGet, "/v2/team/other/manifests/v1")); r.Status != http.StatusOK {
		t.Fatalf("second repository: %d", r.Status)
	}
	if got := reg.Count(http.MethodGet, "token"); got != 2 {
		t.Fatalf("a second repository brought the token requests to %d, want 2 (one per scope)", got)
	}
	tokens := reg.IssuedTokens()
	if len(tokens) != 2 {
		t.Fatalf("issued tokens %d", len(tokens))
	}
	rc.ExpectNoSecrets(t, &tr, tokens...)
}

func TestAuthBearerBasicWithCredentialsFromEnv(t *testing.T) {
	// t.Setenv: not parallel.
	reg := registrytest.New(t, registrytest.BearerBasic)
	d := reg.PushImage(t, "private/app", "v1", types.DockerManifestSchema2).Digest
	t.Setenv("REGCACHE_E2E_PASSWORD", reg.Password)
	rc := startRegcache(t, harness.Config("", harness.Upstream("private.test", reg.URL, harness.CredentialsFromEnv(reg.Username, "REGCACHE_E2E_PASSWORD")...)))
	var tr harness.Transcript
	for _, method := range []string{http.MethodHead, http.MethodGet, http.MethodGet} {
		r := tr.Add(rc.Do(t, method, "/v2/private/app/manifests/v1"))
		if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
			t.Fatalf("%s: %d %s", method, r.Status, r.Body)
		}
	}
	if got := reg.Count(http.MethodGet, "token"); got != 1 {
		t.Fatalf("%d token requests, want 1", got)
	}
	// The token endpoint really checked the credentials regcache sent.
	if !slices.Contains(reg.AuthHeaders(), "Basic "+harness.Basic(reg.Username, reg.Password)) {
		t.Fatal("the token endpoint never saw the configured credentials")
	}
	rc.ExpectNoSecrets(t, &tr, append(reg.IssuedTokens(), reg.Password, harness.Basic(reg.Username, reg.Password))...)
}

// TestAuthBearerBasicWrongCredentialsRefused: a token endpoint that refuses the configured
// credentials is an outage of the upstream, 502 UPSTREAM_FAILED naming the token endpoint, not
// a 403 about the image; refusing anonymous access is 403 DENIED, an answer about the
// repository; no secret shows anywhere.
func TestAuthBearerBasicWrongCredentialsRefused(t *testing.T) {
	reg := registrytest.New(t, registrytest.BearerBasic)
	reg.PushImage(t, "private/app", "v1", types.DockerManifestSchema2)
	const wrong = "not-the-password-7f3a9c"
	t.Setenv("REGCACHE_E2E_WRONG", wrong)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("private.test", reg.URL, harness.CredentialsFromEnv(reg.Username, "REGCACHE_E2E_WRONG")...),
		harness.Upstream("anon.test", reg.URL)))
	var tr harness.Transcript
	const path = "/v2/private/app/manifests/v1"
	r := tr.Add(rc.Do(t, http.MethodGet, path))
	harness.ExpectErrorCode(t, path, r, http.MethodGet, http.StatusBadGateway, "UPSTREAM_FAILED")
	if msg := harness.ErrorOf(t, r).Message; !strings.Contains(msg, "by the token endpoint") {
		t.Fatalf("%s: message %q does not say the token endpoint refused", path, msg)
	}
	harness.ExpectErrorCode(t, "HEAD "+path, tr.Add(rc.Do(t, http.MethodHead, path)), http.MethodHead, http.StatusBadGateway, "UPSTREAM_FAILED")
	harness.ExpectErrorCode(t, "anonymous", tr.Add(rc.Do(t, http.MethodGet, "/v2/anon.test/private/app/manifests/v1")), http.MethodGet, http.StatusForbidden, "DENIED")
	if len(reg.IssuedTokens()) != 0 {
		t.Fatal("a token was issued for wrong or missing credentials")
	}
	rc.ExpectNoSecrets(t, &tr, wrong, harness.Basic(reg.Username, wrong), reg.Password)
}

func TestAuthBasicUpstream(t *testing.T) {
	reg := registrytest.New(t, registrytest.Basic)
	d := reg.PushImage(t, "private/app", "v1", types.OCIManifestSchema1).Digest
	t.Setenv("REGCACHE_E2E_BASIC", reg.Password)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("basic.test", reg.URL, harness.CredentialsFromEnv(reg.Username, "REGCACHE_E2E_BASIC")...),
		harness.Upstream("anon.test", reg.URL)))
	var tr harness.Transcript
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		r := tr.Add(rc.Do(t, method, "/v2/private/app/manifests/v1"))
		if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
			t.Fatalf("%s with credentials: %d %s", method, r.Status, r.Body)
		}
	}
	if reg.Count(http.MethodGet, "token") != 0 {
		t.Fatal("a Basic upstream was asked for a token")
	}
	harness.ExpectErrorCode(t, "anonymous", tr.Add(rc.Do(t, http.MethodGet, "/v2/anon.test/private/app/manifests/v1")), http.MethodGet, http.StatusForbidden, "DENIED")
	rc.ExpectNoSecrets(t, &tr, reg.Password, harness.Basic(reg.Username, reg.Password))
}

func TestUpstreamDenied(t *testing.T) {
	t.Parallel()
	basic := registrytest.New(t, registrytest.Basic)
	p := basic.PushImage(t, "private/app", "v1", types.OCIManifestSchema1)
	tokenReg := registrytest.New(t, registrytest.BearerBasic)
	tokenReg.PushImage(t, "private/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("right.test", basic.URL, "credentials:", "  username: "+basic.Username, "  password: "+basic.Password),
		harness.Upstream("anon.test", basic.URL),
		harness.Upstream("wrong.test", basic.URL, "credentials:", "  username: "+basic.Username, "  password: not-it"),
		harness.Upstream("token-anon.test", tokenReg.URL),
		harness.Upstream("token-wrong.test", tokenReg.URL, "credentials:", "  username: robot", "  password: not-it"),
	))
	harness.ExpectManifest(t, "right credentials", rc.Do(t, "GET", "/v2/right.test/private/app/manifests/v1"), "MISS", p, "GET")
	for _, name := range []string{"anon.test", "wrong.test", "token-anon.test"} {
		path := "/v2/" + name + "/private/app/manifests/v1"
		r := rc.Do(t, "GET", path)
		if code := harness.ExpectError(t, name, r, "GET", 403); code != "DENIED" {
			t.Fatalf("%s: code %s, want DENIED", name, code)
		}
		if !strings.Contains(string(r.Body), "upstream refused") {
			t.Fatalf("%s: message %s", name, r.Body)
		}
		if strings.Contains(string(r.Body), basic.Password) || strings.Contains(string(r.Body), "not-it") {
			t.Fatalf("%s: error leaks a password: %s", name, r.Body)
		}
		// Remembered like a 404: asking again within negative_ttl costs upstream nothing.
		before := basic.Total() + tokenReg.Total()
		harness.ExpectError(t, name+" again", rc.Do(t, "HEAD", path), "HEAD", 403)
		harness.ExpectError(t, name+" again", rc.Do(t, "GET", path), "GET", 403)
		if after := basic.Total() + tokenReg.Total(); after != before {
			t.Fatalf("%s: a remembered denial cost %d upstream requests", name, after-before)
		}
	}
	// A token endpoint refusing regcache's own credentials is not a denial of the image: it
	// is an outage of the upstream, 502, and never remembered. (Refusing anonymous access,
	// above, is an answer: ghcr.io's token endpoint says so for a private package.)
	for _, name := range []string{"token-wrong.test"} {
		path := "/v2/" + name + "/private/app/manifests/v1"
		for i := range 2 {
			before := tokenReg.Count("GET", "token")
			r := rc.Do(t, "GET", path)
			if code := harness.ExpectError(t, name, r, "GET", 502); code != "UPSTREAM_FAILED" || !strings.Contains(string(r.Body), "by the token endpoint") {
				t.Fatalf("%s: code %s, want UPSTREAM_FAILED naming the token endpoint: %s", name, code, r.Body)
			}
			if strings.Contains(string(r.Body), "not-it") || strings.Contains(string(r.Body), tokenReg.Password) {
				t.Fatalf("%s: error leaks a password: %s", name, r.Body)
			}
			if tokenReg.Count("GET", "token") == before {
				t.Fatalf("%s, request %d: the token endpoint was not asked: the refusal was remembered", name, i)
			}
		}
	}
}

// TestCredentialsRejectedIsAnOutage: an upstream whose token endpoint stops taking
// regcache's credentials (401) is an outage: stale tags are served, a cold tag is 502
// UPSTREAM_FAILED (never 403, never remembered), the failure is logged, counted per upstream
// and shown on /readyz without secrets or URLs, and it all clears when upstream recovers.
func TestCredentialsRejectedIsAnOutage(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.BearerBasic)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.PutManifest(t, "team/app", "cold", img.MediaType, img.Body)
	rc := startRegcache(t, harness.Config("  max_stale: 1h\n  negative_ttl: 1m\n", harness.Upstream("reg.test", reg.URL,
		"tag_ttl: 100ms", "credentials:", "  username: "+reg.Username, "  password: "+reg.Password)))
	const path = "/v2/reg.test/team/app/manifests/"
	if r := rc.Do(t, "GET", path+"v1"); r.Status != 200 || r.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("first GET: %d %s", r.Status, r.Header.Get("X-Cache"))
	}
	time.Sleep(150 * time.Millisecond)
	reg.RevokeTokens()
	reg.SetFault(registrytest.OnToken(registrytest.Status(http.StatusUnauthorized)))

	r := rc.Do(t, "GET", path+"v1")
	if r.Status != 200 || r.Header.Get("X-Cache") != "STALE" || !bytes.Equal(r.Body, img.Body) {
		t.Fatalf("stale tag while credentials are refused: %d %s %s", r.Status, r.Header.Get("X-Cache"), r.Body)
	}
	for range 2 {
		r = rc.Do(t, "GET", path+"cold")
		if code := harness.ExpectError(t, "cold tag while credentials are refused", r, "GET", 502); code != "UPSTREAM_FAILED" {
			t.Fatalf("cold tag: code %s, want UPSTREAM_FAILED: %s", code, r.Body)
		}
	}
	ready := rc.Do(t, "GET", "/readyz")
	if ready.Status != 200 || !strings.Contains(string(ready.Body), "upstream reg.test: credentials rejected by the token endpoint") {
		t.Fatalf("/readyz while credentials are refused: %d %q", ready.Status, ready.Body)
	}
	m := rc.Metrics(t)
	if n := m[`regcache_upstream_auth_failures_total{upstream="reg.test"}`]; n < 1 {
		t.Fatalf("regcache_upstream_auth_failures_total{upstream=\"reg.test\"} = %v, want at least 1", n)
	}
	logs := rc.Logs.String()
	if !strings.Contains(logs, "credentials rejected by the token endpoint") {
		t.Fatalf("the refused credentials were not logged:\n%s", logs)
	}
	for what, text := range map[string]string{"/readyz": string(ready.Body), "logs": logs, "error body": string(r.Body)} {
		if strings.Contains(text, reg.Password) {
			t.Fatalf("%s leak the upstream password", what)
		}
	}
	if strings.Contains(string(ready.Body), "http") {
		t.Fatalf("/readyz shows a URL: %q", ready.Body)
	}

	// Upstream takes the credentials again: a cold tag is answered at once (nothing was
	// remembered), the stale one once its backoff (capped at tag_ttl) has passed.
	reg.SetFault(nil)
	if r := rc.Do(t, "GET", path+"cold"); r.Status != 200 {
		t.Fatalf("cold tag after recovery: %d %s", r.Status, r.Body)
	}
	time.Sleep(150 * time.Millisecond)
	if r := rc.Do(t, "GET", path+"v1"); r.Status != 200 || r.Header.Get("X-Cache") != "REVALIDATED" {
		t.Fatalf("after recovery: %d %s", r.Status, r.Header.Get("X-Cache"))
	}
	if ready := rc.Do(t, "GET", "/readyz"); strings.Contains(string(ready.Body), "reg.test") {
		t.Fatalf("/readyz after recovery still shows the failure: %q", ready.Body)
	}
}
