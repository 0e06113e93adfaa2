package main

// Upstream redirects: followed (a HEAD kept a HEAD, the Accept set kept) without the
// upstream's credentials crossing to another host, a redirect target unable to steer them
// to a realm of its own, and redirects to internal addresses refused before any dial.

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/internal/loopback"
	"regcache/upstream/registrytest"
)

func TestUpstreamRedirectFollowedHEADKeptAuthorizationDropped(t *testing.T) {
	t.Parallel()
	near := registrytest.New(t, registrytest.Bearer)
	far := registrytest.New(t, registrytest.NoAuth) // another port: another origin
	pushed := near.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	farRec, nearRec := harness.Record(far), harness.Record(near)
	farRec.Set(registrytest.Serve(pushed.MediaType, pushed.Digest, pushed.Body))
	nearRec.Set(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
		http.Redirect(w, r, far.URL+r.URL.Path, http.StatusTemporaryRedirect)
		return true
	}))
	rc := startRegcache(t, harness.Config("", harness.Upstream("near.test", near.URL)))
	var tr harness.Transcript

	h := tr.Add(rc.Do(t, http.MethodHead, "/v2/team/app/manifests/v1"))
	if h.Status != http.StatusOK || h.Header.Get("Docker-Content-Digest") != pushed.Digest {
		t.Fatalf("HEAD through a redirect: %d %v", h.Status, h.Header)
	}
	g := tr.Add(rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1"))
	if g.Status != http.StatusOK || string(g.Body) != string(pushed.Body) {
		t.Fatalf("GET through a redirect: %d %s", g.Status, g.Body)
	}
	farSeen := farRec.Manifests()
	if len(farSeen) != 2 || farSeen[0].Method != http.MethodHead || farSeen[1].Method != http.MethodGet {
		t.Fatalf("far side saw %+v, want HEAD (kept a HEAD) then GET", farSeen)
	}
	for _, s := range farSeen {
		if s.Auth != "" {
			t.Fatalf("Authorization %q crossed to another host", s.Auth)
		}
		harness.ExpectAllTypesAsked(t, s) // the Accept set survives the hop
	}
	if len(far.AuthHeaders()) != 0 {
		t.Fatalf("far side received Authorization: %q", far.AuthHeaders())
	}
	nearSeen := nearRec.Manifests()
	if len(nearSeen) != 2 {
		t.Fatalf("near side saw %+v", nearSeen)
	}
	for _, s := range nearSeen {
		if !strings.HasPrefix(s.Auth, "Bearer ") {
			t.Fatalf("the upstream itself got %s without its token", s.Method)
		}
	}
	rc.ExpectNoSecrets(t, &tr, near.IssuedTokens()...)
}

func TestUpstreamRedirectTargetCannotSteerCredentials(t *testing.T) {
	near := registrytest.New(t, registrytest.BearerBasic)
	far := registrytest.New(t, registrytest.NoAuth)
	near.PushImage(t, "private/app", "v1", types.OCIManifestSchema1)
	thief := registrytest.New(t, registrytest.NoAuth)
	// The redirect target answers with a challenge naming somebody else's token endpoint.
	far.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+thief.URL+`/token",service="cdn"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	near.SetFault(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
		http.Redirect(w, r, far.URL+r.URL.Path, http.StatusTemporaryRedirect)
		return true
	}))
	t.Setenv("REGCACHE_E2E_STEER", near.Password)
	rc := startRegcache(t, harness.Config("", harness.Upstream("near.test", near.URL, harness.CredentialsFromEnv(near.Username, "REGCACHE_E2E_STEER")...)))
	var tr harness.Transcript
	r := tr.Add(rc.Do(t, http.MethodGet, "/v2/private/app/manifests/v1"))
	harness.ExpectErrorCode(t, "redirect target wants auth", r, http.MethodGet, http.StatusForbidden, "DENIED")
	if thief.Total() != 0 {
		t.Fatalf("the realm a redirect target named was contacted %d times (Authorization %q)", thief.Total(), thief.AuthHeaders())
	}
	rc.ExpectNoSecrets(t, &tr, near.Password, harness.Basic(near.Username, near.Password))
}

func TestUpstreamRedirectToMetadataServiceRefusedWithoutDialling(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	targets := []string{
		"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"http://[fd00:ec2::254]/latest/meta-data/",
		"http://10.0.0.1:2375/containers/json",
	}
	var mu sync.Mutex
	target := targets[0]
	reg.SetFault(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		to := target
		mu.Unlock()
		http.Redirect(w, r, to, http.StatusTemporaryRedirect)
		return true
	}))
	var dial loopback.Dialer
	rc := startRegcacheWith(t, harness.Config("  negative_ttl: 1s\n", harness.Upstream("registry.test", reg.URL, "timeout: 5s")),
		harness.Options{Dial: dial.DialContext})
	for _, to := range targets {
		mu.Lock()
		target = to
		mu.Unlock()
		r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1")
		harness.ExpectErrorCode(t, "redirect to "+to, r, http.MethodGet, http.StatusBadGateway, "UPSTREAM_FAILED")
		if msg := harness.ErrorOf(t, r).Message; !strings.Contains(msg, "refused") {
			t.Fatalf("redirect to %s: message %q does not say it was refused", to, msg)
		}
	}
	// A refused redirect is a failure, not an answer: each attempt asked upstream again.
	if reg.Count(http.MethodGet, "manifest") < len(targets) {
		t.Fatalf("%d manifest GETs upstream for %d attempts", reg.Count(http.MethodGet, "manifest"), len(targets))
	}
	if refused := dial.Refused(); len(refused) != 0 {
		t.Fatalf("regcache tried to dial %v", refused)
	}
}
