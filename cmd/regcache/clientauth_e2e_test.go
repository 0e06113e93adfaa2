package main

// End-to-end tests of client-facing auth: the /v2/ challenge and /token with auth off (what
// docker login, Renovate, Watchtower, Diun and What's Up Docker need), and with htpasswd
// users or static tokens on: every endpoint but /healthz and /readyz closed, Basic and
// issued tokens accepted, forged and expired tokens refused, nothing the client sends
// reaching the upstream or the logs. Finally go-containerregistry's own client walks the
// challenge -> token flow.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/bcrypt"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// sharedSecret is the auth.secret of the tests that forge tokens.
const sharedSecret = "e2e-shared-secret-0123456789abcdef"

// randomSecret is a fresh random string, so a leak check cannot pass by accident.
func randomSecret(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// writeHtpasswd writes an htpasswd file with one bcrypt entry (htpasswd -B, at the lowest
// cost).
func writeHtpasswd(t *testing.T, user, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(p, []byte("# regcache users\n"+user+":"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fromAddress is in as a client at another loopback address (127.0.0.0/8 is all local) sees
// it: the failure limiter counts per address.
func fromAddress(in *harness.Instance, ip string) *harness.Instance {
	from := *in
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	from.Client = &http.Client{Timeout: in.Client.Timeout, Transport: &http.Transport{Proxy: nil, DialContext: dialer.DialContext}}
	return &from
}

// authConfig is a config with one upstream (the default) and extra top-level lines.
func authConfig(reg *registrytest.Registry, top string) string {
	return harness.Config("", harness.Upstream("reg.test", reg.URL)) + top
}

// basicHeader is the Authorization header of Basic credentials.
func basicHeader(user, pass string) string {
	return "Basic " + harness.Basic(user, pass)
}

// challengeFor is the challenge regcache must send for a client that reached it at url.
func challengeFor(url string) string {
	return `Bearer realm="` + url + `/token",service="regcache"`
}

// expectChallenge checks an UNAUTHORIZED registry error carrying challenge.
func expectChallenge(t *testing.T, what string, r harness.Response, challenge string) {
	t.Helper()
	if r.Status != http.StatusUnauthorized {
		t.Fatalf("%s: status %d, want 401 (body %s)", what, r.Status, r.Body)
	}
	if got := r.Header.Values("WWW-Authenticate"); len(got) != 1 || got[0] != challenge {
		t.Fatalf("%s: WWW-Authenticate %q, want exactly %q", what, got, challenge)
	}
	if r.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("%s: no Docker-Distribution-API-Version on the 401", what)
	}
	if len(r.Body) == 0 {
		return // HEAD
	}
	if errs, ok := harness.ParseErrors(r.Body); !ok || len(errs) != 1 || errs[0].Code != "UNAUTHORIZED" {
		t.Errorf("%s: body %s, want one UNAUTHORIZED registry error", what, r.Body)
	}
}

// askToken asks GET /token as a Docker client would and checks the answer's shape.
func askToken(t *testing.T, in *harness.Instance, header ...string) (token string, expiresIn int) {
	t.Helper()
	r := in.Do(t, http.MethodGet, "/token?service=regcache&scope=repository:reg.test/team/app:pull&account=robot", header...)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /token: %d %s", r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET /token: Content-Type %q", ct)
	}
	var tj struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   *int   `json:"expires_in"`
	}
	if err := json.Unmarshal(r.Body, &tj); err != nil {
		t.Fatalf("GET /token: %v in %s", err, r.Body)
	}
	// Watchtower reads only token, OAuth2 clients only access_token.
	if tj.Token == "" || tj.AccessToken != tj.Token || tj.ExpiresIn == nil {
		t.Fatalf("GET /token: %s, want token, access_token (equal) and expires_in", r.Body)
	}
	return tj.Token, *tj.ExpiresIn
}

// forgeToken signs a token as a replica sharing sharedSecret would.
func forgeToken(sub string, exp time.Time) string {
	payload, _ := json.Marshal(map[string]any{"sub": sub, "exp": exp.Unix()})
	p := base64.RawURLEncoding.EncodeToString(payload)
	mac := hmac.New(sha256.New, []byte(sharedSecret))
	mac.Write([]byte(p))
	return p + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// expectUpstreamSawOnlyItsOwnTokens checks that every Authorization the registry received is
// one of the tokens it issued itself to regcache, never something of the client's.
func expectUpstreamSawOnlyItsOwnTokens(t *testing.T, reg *registrytest.Registry, clientSecrets ...string) {
	t.Helper()
	own := map[string]bool{}
	for _, tok := range reg.IssuedTokens() {
		own["Bearer "+tok] = true
	}
	headers := reg.AuthHeaders()
	if len(headers) == 0 {
		t.Fatal("the upstream saw no Authorization at all: the check proves nothing")
	}
	for _, h := range headers {
		if !own[h] {
			t.Errorf("upstream received Authorization %.24q..., not a token it issued", h)
		}
		for _, s := range clientSecrets {
			if strings.Contains(h, s) {
				t.Errorf("upstream received the client's credential %.6s...", s)
			}
		}
	}
}

// expectNoSecretsLogged fails when any secret occurs in regcache's logs, which must hold
// the access log line of a /token request (the requests that carry the secrets).
func expectNoSecretsLogged(t *testing.T, in *harness.Instance, secrets ...string) {
	t.Helper()
	if !strings.Contains(in.Logs.String(), `"path":"/token"`) {
		t.Fatal("no access log line for /token: the leak check proves nothing")
	}
	in.ExpectNoSecrets(t, nil, secrets...)
}

func TestClientAuthOff(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	d := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1).Digest
	rc := startRegcache(t, authConfig(reg, ""))
	challenge := challengeFor(rc.URL)

	// The ping without Authorization is how docker login, Renovate and Watchtower find the
	// realm; Diun accepts a 401 here.
	expectChallenge(t, "GET /v2/ without Authorization", rc.Do(t, http.MethodGet, "/v2/"), challenge)
	expectChallenge(t, "HEAD /v2/ without Authorization", rc.Do(t, http.MethodHead, "/v2/"), challenge)
	expectChallenge(t, "GET /v2 without Authorization", rc.Do(t, http.MethodGet, "/v2"), challenge)

	// docker login pings again with its token; any Authorization is fine with auth off.
	tok, expiresIn := askToken(t, rc)
	if expiresIn != 300 {
		t.Errorf("expires_in = %d, want 300 (token_ttl default 5m)", expiresIn)
	}
	tokAgain, _ := askToken(t, rc, "Authorization", basicHeader("whoever", "whatever")) // ignored
	for _, authz := range []string{"Bearer " + tok, "Bearer " + tokAgain, "Bearer Og==", basicHeader("u", "p"), "Garbage"} {
		if r := rc.Do(t, http.MethodGet, "/v2/", "Authorization", authz); r.Status != http.StatusOK || string(r.Body) != "{}" {
			t.Errorf("GET /v2/ with %.16q: %d %s, want 200 {}", authz, r.Status, r.Body)
		}
	}

	// Every other endpoint ignores Authorization, whatever it is: What's Up Docker's custom
	// registry sends none, its lscr provider "Bearer Og==".
	for _, authz := range []string{"", "Bearer Og==", "Bearer " + tok, basicHeader("u", "p"), "Basic !!", "Garbage"} {
		var header []string
		if authz != "" {
			header = []string{"Authorization", authz}
		}
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			r := rc.Do(t, method, "/v2/team/app/manifests/v1", header...)
			if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
				t.Fatalf("%s manifest with %.16q: %d %s", method, authz, r.Status, r.Body)
			}
		}
	}
	if r := rc.Do(t, http.MethodGet, "/healthz"); r.Status != http.StatusOK {
		t.Errorf("/healthz: %d", r.Status)
	}
	expectUpstreamSawOnlyItsOwnTokens(t, reg, tok, tokAgain, "Og==", base64.StdEncoding.EncodeToString([]byte("u:p")))
	expectNoSecretsLogged(t, rc, tok, tokAgain)
}

func TestClientAuthChallengeRealm(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	plain := startRegcache(t, authConfig(reg, ""))
	trusting := startRegcache(t, authConfig(reg, "trust_forwarded_headers: true\n"))
	public := startRegcache(t, authConfig(reg, "public_url: https://regcache.example.com\ntrust_forwarded_headers: true\n"))

	ask := func(in *harness.Instance, host string, header ...string) harness.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, in.URL+"/v2/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := in.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return harness.Response{Status: resp.StatusCode, Header: resp.Header, Body: body}
	}
	forwarded := []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "registry.example.org"}
	for _, tc := range []struct {
		name string
		in   *harness.Instance
		host string
		hdr  []string
		want string
	}{
		{"request Host", plain, "regcache.lan:5000", nil, "http://regcache.lan:5000"},
		{"X-Forwarded-* ignored unless trusted", plain, "regcache.lan:5000", forwarded, "http://regcache.lan:5000"},
		{"trusted X-Forwarded-*", trusting, "10.0.0.5:5000", forwarded, "https://registry.example.org"},
		{"trusted, but none sent", trusting, "10.0.0.5:5000", nil, "http://10.0.0.5:5000"},
		{"public_url wins", public, "10.0.0.5:5000", forwarded, "https://regcache.example.com"},
	} {
		expectChallenge(t, tc.name, ask(tc.in, tc.host, tc.hdr...), challengeFor(tc.want))
	}
}

func TestClientAuthHtpasswd(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	d := reg.PushImage(t, "team/app", "v1", types.DockerManifestSchema2).Digest
	user, pass := "alice", randomSecret("pw-")
	rc := startRegcache(t, authConfig(reg, "auth:\n  htpasswd: "+writeHtpasswd(t, user, pass)+"\n  secret: "+sharedSecret+"\n"))
	challenge := challengeFor(rc.URL)
	basic := basicHeader(user, pass)
	const manifest = "/v2/team/app/manifests/v1"

	// Closed without credentials: every endpoint but the probes.
	for _, path := range []string{"/v2/", manifest, "/v2/reg.test/team/app/manifests/v1", "/v2/team/app/tags/list",
		"/v2/team/app/blobs/" + d, "/api/v1/digest?image=reg.test/team/app:v1", "/nope"} {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			expectChallenge(t, method+" "+path+" without credentials", rc.Do(t, method, path), challenge)
		}
	}
	for _, authz := range []string{"Bearer Og==", basicHeader(user, "wrong"), basicHeader("mallory", pass), "Basic !!", "Garbage"} {
		expectChallenge(t, "manifest with "+authz[:6], rc.Do(t, http.MethodGet, manifest, "Authorization", authz), challenge)
		expectChallenge(t, "/v2/ with "+authz[:6], rc.Do(t, http.MethodGet, "/v2/", "Authorization", authz), challenge)
	}
	if r := rc.Do(t, http.MethodGet, "/healthz"); r.Status != http.StatusOK {
		t.Errorf("/healthz without credentials: %d, want 200", r.Status)
	}
	if n := reg.Count(http.MethodGet, "manifest") + reg.Count(http.MethodHead, "manifest"); n != 0 {
		t.Fatalf("refused requests reached the upstream %d times", n)
	}

	// Basic on every request, as What's Up Docker's custom registry does.
	for i := 0; i < 3; i++ {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			r := rc.Do(t, method, manifest, "Authorization", basic)
			if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
				t.Fatalf("%s manifest with Basic: %d %s", method, r.Status, r.Body)
			}
		}
	}
	if r := rc.Do(t, http.MethodGet, "/v2/", "Authorization", basic); r.Status != http.StatusOK {
		t.Fatalf("/v2/ with Basic: %d %s", r.Status, r.Body)
	}

	// The token flow: /token wants Basic, and answers with a Basic challenge otherwise.
	basicChallenge := `Basic realm="regcache"`
	expectChallenge(t, "/token without credentials", rc.Do(t, http.MethodGet, "/token?service=regcache"), basicChallenge)
	expectChallenge(t, "/token with a wrong password", rc.Do(t, http.MethodGet, "/token", "Authorization", basicHeader(user, "wrong")), basicChallenge)
	tok, expiresIn := askToken(t, rc, "Authorization", basic)
	if expiresIn != 300 {
		t.Errorf("expires_in = %d, want 300", expiresIn)
	}
	for _, path := range []string{"/v2/", manifest} {
		if r := rc.Do(t, http.MethodGet, path, "Authorization", "Bearer "+tok); r.Status != http.StatusOK {
			t.Fatalf("GET %s with the issued token: %d %s", path, r.Status, r.Body)
		}
	}

	// Replicas sharing auth.secret accept each other's tokens; anything else is refused.
	if r := rc.Do(t, http.MethodGet, manifest, "Authorization", "Bearer "+forgeToken("bob", time.Now().Add(time.Minute))); r.Status != http.StatusOK {
		t.Errorf("token signed with the shared secret: %d %s", r.Status, r.Body)
	}
	payload, sig, _ := strings.Cut(tok, ".")
	longer, _ := json.Marshal(map[string]any{"sub": user, "exp": time.Now().Add(time.Hour).Unix()})
	// Wrong tokens count toward the failure limit, which the wrong credentials above have
	// mostly spent for 127.0.0.1: these come from another address.
	other := fromAddress(rc, "127.0.0.2")
	for name, bad := range map[string]string{
		"expired":             forgeToken(user, time.Now().Add(-time.Second)),
		"payload swapped":     base64.RawURLEncoding.EncodeToString(longer) + "." + sig,
		"signature swapped":   payload + "." + strings.SplitN(forgeToken(user, time.Now().Add(time.Minute)), ".", 2)[1],
		"signature truncated": tok[:len(tok)-4],
		"not a token":         "not-a-token",
		"token re-encoded":    base64.StdEncoding.EncodeToString([]byte(tok)),
	} {
		expectChallenge(t, name+" token", other.Do(t, http.MethodGet, manifest, "Authorization", "Bearer "+bad), challenge)
	}

	expectUpstreamSawOnlyItsOwnTokens(t, reg, pass, basic[len("Basic "):], tok)
	expectNoSecretsLogged(t, rc, pass, basic[len("Basic "):], tok)
}

func TestClientAuthIssuedTokenExpires(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	user, pass := "alice", randomSecret("pw-")
	rc := startRegcache(t, authConfig(reg, "auth:\n  htpasswd: "+writeHtpasswd(t, user, pass)+"\n  token_ttl: 2s\n"))
	issued := time.Now()
	tok, expiresIn := askToken(t, rc, "Authorization", basicHeader(user, pass))
	if expiresIn != 2 {
		t.Errorf("expires_in = %d, want 2", expiresIn)
	}
	const manifest = "/v2/team/app/manifests/v1"
	if r := rc.Do(t, http.MethodHead, manifest, "Authorization", "Bearer "+tok); r.Status != http.StatusOK {
		t.Fatalf("fresh token: %d", r.Status)
	}
	deadline := time.Now().Add(4 * time.Second)
	for {
		r := rc.Do(t, http.MethodHead, manifest, "Authorization", "Bearer "+tok)
		if r.Status == http.StatusUnauthorized {
			expectChallenge(t, "expired token", r, challengeFor(rc.URL))
			if age := time.Since(issued); age < 2*time.Second {
				t.Errorf("token refused %v after it was issued, before its expires_in of 2s", age)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token with token_ttl 2s still accepted after 4s (status %d)", r.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestClientAuthStaticTokens(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	d := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1).Digest
	static := randomSecret("static-")
	rc := startRegcache(t, authConfig(reg, "auth:\n  tokens: [\""+static+"\"]\n"))
	challenge := challengeFor(rc.URL)
	const manifest = "/v2/team/app/manifests/v1"

	expectChallenge(t, "/v2/ without", rc.Do(t, http.MethodGet, "/v2/"), challenge)
	expectChallenge(t, "manifest without", rc.Do(t, http.MethodGet, manifest), challenge)
	expectChallenge(t, "manifest with another token", rc.Do(t, http.MethodGet, manifest, "Authorization", "Bearer "+static+"x"), challenge)
	expectChallenge(t, "/token without", rc.Do(t, http.MethodGet, "/token"), `Basic realm="regcache"`)

	// Directly as Bearer, or as the password of Basic (docker login --password-stdin).
	tok, _ := askToken(t, rc, "Authorization", basicHeader("ci", static))
	for _, authz := range []string{"Bearer " + static, basicHeader("ci", static), basicHeader("anyone", static), "Bearer " + tok} {
		for _, path := range []string{"/v2/", manifest} {
			r := rc.Do(t, http.MethodGet, path, "Authorization", authz)
			if r.Status != http.StatusOK {
				t.Fatalf("GET %s with %.12q...: %d %s", path, authz, r.Status, r.Body)
			}
			if path == manifest && r.Header.Get("Docker-Content-Digest") != d {
				t.Fatalf("digest %s, want %s", r.Header.Get("Docker-Content-Digest"), d)
			}
		}
	}
	expectUpstreamSawOnlyItsOwnTokens(t, reg, static, tok)
	expectNoSecretsLogged(t, rc, static, tok)
}

// TestClientAuthGoContainerRegistry drives regcache with a real registry client: ggcr pings
// /v2/, reads the Bearer challenge, fetches /token with Basic credentials and retries with
// the token, exactly as crane, ko and Renovate's Go tooling do.
func TestClientAuthGoContainerRegistry(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	pushed := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	user, pass := "alice", randomSecret("pw-")
	on := startRegcache(t, authConfig(reg, "auth:\n  htpasswd: "+writeHtpasswd(t, user, pass)+"\n"))
	off := startRegcache(t, authConfig(reg, ""))

	ref := func(in *harness.Instance) name.Reference {
		r, err := name.ParseReference(strings.TrimPrefix(in.URL, "http://")+"/reg.test/team/app:v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	opts := func(a authn.Authenticator) []remote.Option {
		return []remote.Option{remote.WithAuth(a), remote.WithContext(t.Context()), remote.WithTransport(&http.Transport{Proxy: nil})}
	}

	alice := &authn.Basic{Username: user, Password: pass}
	head, err := remote.Head(ref(on), opts(alice)...)
	if err != nil {
		t.Fatalf("remote.Head with Basic credentials: %v", err)
	}
	if head.Digest.String() != pushed.Digest {
		t.Errorf("remote.Head digest %s, want %s", head.Digest, pushed.Digest)
	}
	got, err := remote.Get(ref(on), opts(alice)...)
	if err != nil {
		t.Fatalf("remote.Get with Basic credentials: %v", err)
	}
	if got.Digest.String() != pushed.Digest || string(got.Manifest) != string(pushed.Body) {
		t.Errorf("remote.Get digest %s, want %s (or the body differs)", got.Digest, pushed.Digest)
	}
	// The client went the token way: challenge, /token, then Bearer.
	if !strings.Contains(on.Logs.String(), `"path":"/token","status":200`) {
		t.Error("no successful GET /token in the access log: ggcr did not take the token flow")
	}

	for name, a := range map[string]authn.Authenticator{
		"wrong password": &authn.Basic{Username: user, Password: "wrong"},
		"anonymous":      authn.Anonymous,
	} {
		if _, err := remote.Head(ref(on), opts(a)...); err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
			t.Errorf("remote.Head %s with auth on: %v, want a 401", name, err)
		}
	}

	// With auth off ggcr's anonymous token flow works too.
	if d, err := remote.Head(ref(off), opts(authn.Anonymous)...); err != nil || d.Digest.String() != pushed.Digest {
		t.Errorf("remote.Head anonymous with auth off: %v, %v", d, err)
	}

	expectUpstreamSawOnlyItsOwnTokens(t, reg, pass)
	expectNoSecretsLogged(t, on, pass)
}

// TestClientAuthCLIs logs in with the CLIs people use against registries, with auth on.
func TestClientAuthCLIs(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "team/app", "v1", types.DockerManifestSchema2)
	user, pass := "alice", randomSecret("pw-")
	rc := startRegcache(t, authConfig(reg, "auth:\n  htpasswd: "+writeHtpasswd(t, user, pass)+"\n"))
	host := strings.TrimPrefix(rc.URL, "http://")
	image := host + "/reg.test/team/app:v1"
	ran := false // lookTool skips a subtest whose CLI is not installed

	t.Run("skopeo", func(t *testing.T) {
		skopeo := harness.Tool(t, "skopeo", "apt-get install -y skopeo")
		ran = true
		raw := harness.RunTool(t, nil, skopeo, "inspect", "--tls-verify=false", "--creds", user+":"+pass, "docker://"+image)
		var inspect struct{ Digest string }
		if err := json.Unmarshal([]byte(raw), &inspect); err != nil || inspect.Digest != img.Digest {
			t.Fatalf("skopeo inspect = %+v (%v), want digest %s", inspect, err, img.Digest)
		}
		cmd := exec.Command(skopeo, "inspect", "--tls-verify=false", "--creds", user+":wrong", "docker://"+image)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Fatalf("skopeo inspect with a wrong password succeeded:\n%s", out)
		}
	})
	t.Run("crane", func(t *testing.T) {
		crane := harness.Tool(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
		ran = true
		env := []string{"DOCKER_CONFIG=" + t.TempDir(), "HOME=" + t.TempDir()}
		harness.RunTool(t, env, crane, "auth", "login", host, "-u", user, "-p", pass)
		if d := strings.TrimSpace(harness.RunTool(t, env, crane, "digest", "--insecure", image)); d != img.Digest {
			t.Fatalf("crane digest = %s, want %s", d, img.Digest)
		}
	})
	t.Run("regctl", func(t *testing.T) {
		regctl := harness.Tool(t, "regctl", "go install github.com/regclient/regclient/cmd/regctl@v0.11.7")
		ran = true
		env := []string{"HOME=" + t.TempDir()}
		// Without credentials yet, set's own connectivity check would meet the 401.
		harness.RunTool(t, env, regctl, "registry", "set", host, "--tls", "disabled", "--skip-check")
		harness.RunTool(t, env, regctl, "registry", "login", host, "-u", user, "-p", pass)
		if d := strings.TrimSpace(harness.RunTool(t, env, regctl, "image", "digest", image)); d != img.Digest {
			t.Fatalf("regctl image digest = %s, want %s", d, img.Digest)
		}
	})
	if !ran {
		t.Skip("no CLI installed")
	}
	expectUpstreamSawOnlyItsOwnTokens(t, reg, pass)
	expectNoSecretsLogged(t, rc, pass)
}

// startWithStaticToken starts a regcache with a random static token (returned) and the
// auth: lines extra, in front of a registry holding team/app:v1.
func startWithStaticToken(t *testing.T, extra string) (*harness.Instance, string, *registrytest.Registry) {
	t.Helper()
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	static := randomSecret("static-")
	return startRegcache(t, authConfig(reg, "auth:\n  tokens: [\""+static+"\"]\n"+extra)), static, reg
}

// TestClientAuthAnonymousTokensAcrossReplicas: a replica with auth off but the fleet's
// auth.secret hands anyone a signed "anonymous" token; a replica with auth on sharing the
// secret must refuse it, and the auth-off replica warns about its secret at start.
func TestClientAuthAnonymousTokensAcrossReplicas(t *testing.T) {
	t.Parallel()
	on, static, reg := startWithStaticToken(t, "  secret: "+sharedSecret+"\n")
	off := startRegcache(t, authConfig(reg, "auth:\n  secret: "+sharedSecret+"\n"))
	const manifest = "/v2/team/app/manifests/v1"

	anon, _ := askToken(t, off)
	if r := off.Do(t, http.MethodGet, manifest, "Authorization", "Bearer "+anon); r.Status != http.StatusOK {
		t.Fatalf("the auth-off replica: %d %s", r.Status, r.Body)
	}
	expectChallenge(t, "anonymous token on the auth-on replica", on.Do(t, http.MethodGet, manifest, "Authorization", "Bearer "+anon), challengeFor(on.URL))
	// A token the auth-on replica issued passes on it, as one forged for a user does.
	tok, _ := askToken(t, on, "Authorization", basicHeader("ci", static))
	for _, bearer := range []string{tok, forgeToken("bob", time.Now().Add(time.Minute))} {
		if r := on.Do(t, http.MethodGet, manifest, "Authorization", "Bearer "+bearer); r.Status != http.StatusOK {
			t.Fatalf("the auth-on replica's own kind of token: %d %s", r.Status, r.Body)
		}
	}
	if !strings.Contains(off.Logs.String(), "auth.secret is set but auth is off") {
		t.Error("the auth-off replica did not warn about its auth.secret")
	}
	if strings.Contains(off.Logs.String(), sharedSecret) {
		t.Error("the warning shows the secret")
	}
}

// TestClientAuthTokenGuessingLimited: wrong Bearer tokens are rationed like wrong passwords.
// Before, 3,000 guesses got 3,000 401s at thousands a second.
func TestClientAuthTokenGuessingLimited(t *testing.T) {
	t.Parallel()
	rc, static, _ := startWithStaticToken(t, "")
	const manifest = "/v2/team/app/manifests/v1"
	guesser := fromAddress(rc, "127.0.0.3")
	codes := map[int]int{}
	var last harness.Response
	for i := range 50 {
		last = guesser.Do(t, http.MethodGet, manifest, "Authorization", "Bearer "+randomSecret(fmt.Sprint("guess-", i, "-")))
		codes[last.Status]++
	}
	if codes[http.StatusUnauthorized] != 10 || codes[http.StatusTooManyRequests] != 40 {
		t.Fatalf("50 wrong tokens: statuses %v, want 10x401 then 40x429", codes)
	}
	if last.Header.Get("Retry-After") == "" || !strings.Contains(string(last.Body), "TOOMANYREQUESTS") {
		t.Errorf("429 without Retry-After or TOOMANYREQUESTS: %v %s", last.Header, last.Body)
	}
	// Other addresses are not affected.
	if r := rc.Do(t, http.MethodGet, manifest, "Authorization", "Bearer "+static); r.Status != http.StatusOK {
		t.Errorf("the right token from another address: %d %s", r.Status, r.Body)
	}
}

// TestClientAuthLoginStorm: 32 addresses x 10 failed logins, each address under its own
// failure limit. bcrypt work is bounded globally, so a client with a static token keeps its
// latency (before, its median went from a few ms to 0.3-0.4 s), and the storm's logins get
// 401 or, beyond the bound, 429.
func TestClientAuthLoginStorm(t *testing.T) {
	rc, static, _ := startWithStaticToken(t, "  htpasswd: "+writeHtpasswd(t, "alice", randomSecret("pw-"))+"\n")
	const manifest = "/v2/team/app/manifests/v1"
	median := func(n int) time.Duration {
		var took []time.Duration
		for range n {
			start := time.Now()
			if r := rc.Do(t, http.MethodHead, manifest, "Authorization", "Bearer "+static); r.Status != http.StatusOK {
				t.Fatalf("static token: %d", r.Status)
			}
			took = append(took, time.Since(start))
			time.Sleep(20 * time.Millisecond)
		}
		slices.Sort(took)
		return took[len(took)/2]
	}
	before := median(10)

	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	stormDone := make(chan struct{})
	for c := range 32 {
		from := fromAddress(rc, fmt.Sprintf("127.0.1.%d", c+1))
		wg.Go(func() {
			for i := range 10 {
				r := from.Do(t, http.MethodGet, manifest, "Authorization", basicHeader("alice", fmt.Sprint("guess-", i)))
				mu.Lock()
				codes[r.Status]++
				mu.Unlock()
			}
		})
	}
	go func() { wg.Wait(); close(stormDone) }()
	time.Sleep(100 * time.Millisecond) // let the storm start
	during := median(15)
	select {
	case <-stormDone:
		t.Log("the storm ended while the static-token client was measured")
	default:
	}
	<-stormDone
	t.Logf("static-token median %v before the storm, %v during; storm statuses %v", before, during, codes)
	if codes[http.StatusUnauthorized]+codes[http.StatusTooManyRequests] != 320 {
		t.Errorf("storm statuses %v, want only 401 and 429", codes)
	}
	if during > before+150*time.Millisecond {
		t.Errorf("static-token median %v during the storm, %v before: bcrypt starves other requests", during, before)
	}
}
