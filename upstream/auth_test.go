package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream/registrytest"
)

func TestParseChallenge(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string
		want   Challenge
		ok     bool
	}{
		{
			name:   "Docker Hub",
			values: []string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://auth.docker.io/token", Service: "registry.docker.io", Scope: "repository:library/nginx:pull"},
			ok:     true,
		},
		{
			name:   "ghcr.io (and lscr.io, which passes it on)",
			values: []string{`Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:linuxserver/nginx:pull"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://ghcr.io/token", Service: "ghcr.io", Scope: "repository:linuxserver/nginx:pull"},
			ok:     true,
		},
		{
			name:   "quay.io, no scope",
			values: []string{`Bearer realm="https://quay.io/v2/auth",service="quay.io"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://quay.io/v2/auth", Service: "quay.io"},
			ok:     true,
		},
		{
			name:   "lower-case scheme and keys in mixed case",
			values: []string{`bearer Realm="https://r.example/token", SERVICE="r.example"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://r.example/token", Service: "r.example"},
			ok:     true,
		},
		{
			name:   "quoted commas stay inside the value",
			values: []string{`Bearer realm="https://r.example/token?a=1,b=2",service="r",scope="repository:a/b:pull,push"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://r.example/token?a=1,b=2", Service: "r", Scope: "repository:a/b:pull,push"},
			ok:     true,
		},
		{
			name:   "several scopes separated by a space inside quotes",
			values: []string{`Bearer realm="https://r/token",scope="repository:a:pull repository:b:pull"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://r/token", Scope: "repository:a:pull repository:b:pull"},
			ok:     true,
		},
		{
			name:   "escaped quote in a quoted value",
			values: []string{`Bearer realm="https://r/token",service="a\"b"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://r/token", Service: `a"b`},
			ok:     true,
		},
		{
			name:   "unquoted values and spaces around separators",
			values: []string{`Bearer realm=https://r/token , service = r.example`},
			want:   Challenge{Scheme: "bearer", Realm: "https://r/token", Service: "r.example"},
			ok:     true,
		},
		{
			name:   "Basic",
			values: []string{`Basic realm="Registry Realm"`},
			want:   Challenge{Scheme: "basic", Realm: "Registry Realm"},
			ok:     true,
		},
		{
			name:   "Basic without parameters",
			values: []string{`Basic`},
			want:   Challenge{Scheme: "basic"},
			ok:     true,
		},
		{
			name:   "Bearer wins over an earlier Basic",
			values: []string{`Basic realm="x"`, `Bearer realm="https://r/token",service="r"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://r/token", Service: "r"},
			ok:     true,
		},
		{
			name:   "first Basic kept when the Bearer has no realm",
			values: []string{`Bearer service="r"`, `Basic realm="one"`, `Basic realm="two"`},
			want:   Challenge{Scheme: "basic", Realm: "one"},
			ok:     true,
		},
		{
			name:   "unknown scheme skipped",
			values: []string{`Negotiate abc`, `Bearer realm="https://r/token"`},
			want:   Challenge{Scheme: "bearer", Realm: "https://r/token"},
			ok:     true,
		},
		{name: "Bearer without realm is no usable challenge", values: []string{`Bearer service="r"`}},
		{name: "nothing", values: nil},
		{name: "empty value", values: []string{""}},
		{name: "garbage", values: []string{`Negotiate`, `=,=,"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ParseChallenge(tc.values)
			if ok != tc.ok || got != tc.want {
				t.Fatalf("ParseChallenge(%q) = %+v, %v; want %+v, %v", tc.values, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// newTestRegistry builds a Registry for a loopback test server.
func newTestRegistry(t *testing.T, url, user, pass string) *Registry {
	t.Helper()
	r, err := New(Options{Name: "test", URL: url, Username: user, Password: pass, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func TestTokenReusedPerScope(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	for _, tag := range []string{"a", "b", "c", "d"} {
		reg.PushImage(t, "team/app", tag, types.OCIManifestSchema1)
	}
	reg.PushImage(t, "team/other", "a", types.OCIManifestSchema1)
	r := newTestRegistry(t, reg.URL, "", "")
	ctx := context.Background()
	for _, tag := range []string{"a", "b", "c", "d"} {
		if _, err := r.GetManifest(ctx, "team/app", tag); err != nil {
			t.Fatalf("GET %s: %v", tag, err)
		}
		if _, err := r.HeadManifest(ctx, "team/app", tag); err != nil {
			t.Fatalf("HEAD %s: %v", tag, err)
		}
	}
	if n := reg.Count("GET", "token"); n != 1 {
		t.Fatalf("8 requests in one repository cost %d token requests, want 1", n)
	}
	// Learning the challenge costs one /v2/ ping, and no manifest request is ever sent
	// without a token (no 401 round trips).
	if n := reg.Count("GET", "base"); n != 1 {
		t.Fatalf("%d pings, want 1", n)
	}
	if got := reg.Count("GET", "manifest") + reg.Count("HEAD", "manifest"); got != 8 {
		t.Fatalf("%d manifest requests, want 8 (no 401 retries)", got)
	}
	if _, err := r.GetManifest(ctx, "team/other", "a"); err != nil {
		t.Fatal(err)
	}
	if n := reg.Count("GET", "token"); n != 2 {
		t.Fatalf("a second repository made %d token requests in all, want 2 (tokens are per scope)", n)
	}
}

func TestBearerBasicCredentials(t *testing.T) {
	reg := registrytest.New(t, registrytest.BearerBasic)
	reg.PushImage(t, "private/app", "v1", types.DockerManifestSchema2)
	ctx := context.Background()

	good := newTestRegistry(t, reg.URL, reg.Username, reg.Password)
	if _, err := good.GetManifest(ctx, "private/app", "v1"); err != nil {
		t.Fatalf("with the right credentials: %v", err)
	}

	const wrong = "wrong-password-1234"
	bad := newTestRegistry(t, reg.URL, reg.Username, wrong)
	_, err := bad.GetManifest(ctx, "private/app", "v1")
	// The token endpoint refusing our credentials is an outage of the upstream, not a
	// denial of the image (a stale answer may cover it).
	if !errors.Is(err, ErrUnavailable) || !CredentialsRejected(err) {
		t.Fatalf("with wrong credentials: %v, want unavailable, credentials rejected", err)
	}
	if cs := bad.Credentials(); cs.Failures != 1 || cs.FailingSince.IsZero() || cs.Status != 401 {
		t.Fatalf("with wrong credentials: state %+v, want 1 failure since now, HTTP 401", cs)
	}
	if cs := good.Credentials(); cs.Failures != 0 || !cs.FailingSince.IsZero() {
		t.Fatalf("with the right credentials: state %+v, want none", cs)
	}
	for _, secret := range []string{wrong, reg.Password, base64.StdEncoding.EncodeToString([]byte(reg.Username + ":" + wrong))} {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("error message %q carries a credential", err)
		}
	}

	// Without credentials there are none to reject: the token endpoint refusing anonymous
	// access to a scope is an answer about that repository (ghcr.io's for a private one).
	anon := newTestRegistry(t, reg.URL, "", "")
	if _, err := anon.GetManifest(ctx, "private/app", "v1"); !errors.Is(err, ErrDenied) || CredentialsRejected(err) {
		t.Fatalf("anonymous: %v, want ErrDenied", err)
	}
	if cs := anon.Credentials(); cs.Failures != 0 {
		t.Fatalf("anonymous: state %+v, want no credential failures", cs)
	}
}

func TestBasicAuth(t *testing.T) {
	reg := registrytest.New(t, registrytest.Basic)
	reg.PushImage(t, "private/app", "v1", types.DockerManifestSchema2)
	ctx := context.Background()

	good := newTestRegistry(t, reg.URL, reg.Username, reg.Password)
	for i := 0; i < 3; i++ {
		if _, err := good.HeadManifest(ctx, "private/app", "v1"); err != nil {
			t.Fatalf("with credentials: %v", err)
		}
	}
	if reg.Count("GET", "token") != 0 {
		t.Fatal("a Basic registry was asked for a token")
	}
	// After the ping, every request carries Basic auth up front: no 401 round trips.
	if n := reg.Count("HEAD", "manifest"); n != 3 {
		t.Fatalf("%d HEADs for 3 lookups", n)
	}

	anon := newTestRegistry(t, reg.URL, "", "")
	if _, err := anon.HeadManifest(ctx, "private/app", "v1"); !errors.Is(err, ErrDenied) {
		t.Fatalf("anonymous: %v, want ErrDenied", err)
	}
	wrong := newTestRegistry(t, reg.URL, reg.Username, "nope")
	if _, err := wrong.HeadManifest(ctx, "private/app", "v1"); !errors.Is(err, ErrDenied) {
		t.Fatalf("wrong password: %v, want ErrDenied", err)
	}
}

// tokenServer is a registry whose /v2/ and manifests want a token from /token, which
// answers with body; with the token, a manifest HEAD answers 200 with a digest.
func tokenServer(t *testing.T, body string, tokenHits *atomic.Int32) *httptest.Server {
	return bearerServer(t, body, tokenHits, nil, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", MediaTypeOCIManifest)
		w.Header().Set("Docker-Content-Digest", "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
		w.Header().Set("Content-Length", "2")
	})
}

// bearerServer is a registry that challenges every request without "Bearer good" to fetch
// a token from its /token, which answers with body (after release, when not nil) and counts
// in tokenHits; authorized requests go to authorized.
func bearerServer(t *testing.T, body string, tokenHits *atomic.Int32, release <-chan struct{}, authorized http.HandlerFunc) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			tokenHits.Add(1)
			if release != nil {
				<-release
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(body))
		case r.Header.Get("Authorization") == "Bearer good":
			authorized(w, r)
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="t"`)
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestTokenResponseShapes(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		ok         bool
	}{
		{"token field (Docker Hub, Watchtower reads only this)", `{"token":"good","expires_in":300}`, true},
		{"access_token only (OAuth2 name)", `{"access_token":"good"}`, true},
		{"no expires_in uses the default lifetime", `{"token":"good"}`, true},
		{"no token at all", `{"expires_in":300}`, false},
		{"not JSON", `<html>login</html>`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int32
			srv := tokenServer(t, tc.body, &hits)
			r := newTestRegistry(t, srv.URL, "", "")
			_, err := r.HeadManifest(context.Background(), "a/b", "v1")
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := r.HeadManifest(context.Background(), "a/b", "v1"); err != nil {
					t.Fatal(err)
				}
				if hits.Load() != 1 {
					t.Fatalf("%d token requests for two lookups, want 1", hits.Load())
				}
				return
			}
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("got %v, want ErrUnavailable (a broken token endpoint is an upstream failure)", err)
			}
		})
	}
}

func TestExpiredTokenIsRenewed(t *testing.T) {
	var hits atomic.Int32
	srv := tokenServer(t, `{"token":"good","expires_in":1}`, &hits)
	r := newTestRegistry(t, srv.URL, "", "")
	ctx := context.Background()
	if _, err := r.HeadManifest(ctx, "a/b", "v1"); err != nil {
		t.Fatal(err)
	}
	// A 1 s token is renewed a tenth early; pretend time passed by expiring it in place.
	r.auth.mu.Lock()
	for k, v := range r.auth.tokens {
		v.expires = time.Now().Add(-time.Millisecond)
		r.auth.tokens[k] = v
	}
	r.auth.mu.Unlock()
	if _, err := r.HeadManifest(ctx, "a/b", "v1"); err != nil {
		t.Fatal(err)
	}
	if hits.Load() != 2 {
		t.Fatalf("%d token requests, want 2 (the expired token renewed)", hits.Load())
	}
}

func TestFetchTokenRefusesUnsafeRealms(t *testing.T) {
	// No request is sent in any case: the realm is refused before anything is dialled.
	dialled := false
	r, err := New(Options{Name: "t", URL: "https://registry.example", Username: "u", Password: "p",
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialled = true
			return nil, errors.New("no network in this test")
		}})
	if err != nil {
		t.Fatal(err)
	}
	for _, realm := range []string{
		"http://registry.example/token", // credentials would leave TLS
		"ftp://registry.example/token",
		"/token",
		"",
		"https://169.254.169.254/latest/meta-data/", // credentials into the host's network
		"https://10.0.0.5/token",
		"https://127.0.0.1:8080/token",
		"https://[::1]/token",
	} {
		_, err := r.fetchToken(context.Background(), Challenge{Scheme: "bearer", Realm: realm}, "repository:a:pull")
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("realm %q: %v, want ErrInvalid", realm, err)
		}
	}
	if dialled {
		t.Fatal("a refused realm was dialled")
	}
}
