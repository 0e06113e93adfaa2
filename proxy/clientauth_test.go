package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/crypto/bcrypt"
)

// authRequest is a request as the server would hand it to the handler.
func authRequest(method, uri, host string, header ...string) *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	if host != "" {
		req.Header.SetHost(host)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	ctx := &fasthttp.RequestCtx{}
	ctx.Init(&req, nil, nil)
	return ctx
}

func basicHeader(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// newTestAuth builds a ClientAuth whose clock the test moves.
func newTestAuth(t testing.TB, opts ClientAuthOptions) (*ClientAuth, *time.Time) {
	t.Helper()
	a, err := NewClientAuth(opts)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	a.now = func() time.Time { return now }
	return a, &now
}

func bcryptHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestTokenSignVerify(t *testing.T) {
	a, now := newTestAuth(t, ClientAuthOptions{Secret: []byte("k-0123456789abcdef0123456789abcdef"), TokenTTL: time.Minute})
	tok, ttl := a.issueToken("alice")
	if ttl != time.Minute {
		t.Errorf("ttl = %v, want 1m", ttl)
	}
	payload, sig, ok := strings.Cut(tok, ".")
	if !ok || strings.ContainsAny(tok, "+/=") {
		t.Fatalf("token %q is not base64url(payload).base64url(sig)", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(raw, &claims); err != nil || claims["sub"] != "alice" || claims["exp"] != float64(now.Add(time.Minute).Unix()) {
		t.Fatalf("payload %s (err %v), want {sub: alice, exp: now+1m}", raw, err)
	}
	if s, _ := base64.RawURLEncoding.DecodeString(sig); len(s) != sha256.Size {
		t.Fatalf("signature is %d bytes, want an HMAC-SHA256", len(s))
	}

	c, err := a.verifyToken([]byte(tok))
	if err != nil || c.Sub != "alice" {
		t.Fatalf("verify fresh token = %+v, %v", c, err)
	}

	t.Run("expiry", func(t *testing.T) {
		*now = now.Add(59 * time.Second)
		if _, err := a.verifyToken([]byte(tok)); err != nil {
			t.Errorf("1s before expiry: %v", err)
		}
		*now = now.Add(time.Second)
		if _, err := a.verifyToken([]byte(tok)); !errors.Is(err, errTokenExpired) {
			t.Errorf("at expiry: %v, want expired", err)
		}
		*now = now.Add(-time.Minute)
	})

	t.Run("tamper", func(t *testing.T) {
		forged, _ := json.Marshal(tokenClaims{Sub: "alice", Exp: now.Add(24 * time.Hour).Unix()})
		forgedPayload := base64.RawURLEncoding.EncodeToString(forged)
		other, _ := newTestAuth(t, ClientAuthOptions{Secret: []byte("another-key-0123456789abcdef012345")})
		otherTok, _ := other.issueToken("alice")
		flip := func(s string, i int) string {
			b := []byte(s)
			if b[i] == 'A' {
				b[i] = 'B'
			} else {
				b[i] = 'A'
			}
			return string(b)
		}
		for _, tc := range []struct {
			name string
			tok  string
			want error
		}{
			{"payload changed (longer expiry)", forgedPayload + "." + sig, errTokenSignature},
			{"payload byte flipped", flip(payload, 3) + "." + sig, errTokenSignature},
			{"signature byte flipped", payload + "." + flip(sig, 5), errTokenSignature},
			{"signed with another key", otherTok, errTokenSignature},
			{"signature of another token", strings.SplitN(otherTok, ".", 2)[0] + "." + sig, errTokenSignature},
			{"empty", "", errTokenMalformed},
			{"no dot", payload + sig, errTokenMalformed},
			{"no signature", payload + ".", errTokenMalformed},
			{"no payload", "." + sig, errTokenMalformed},
			{"short signature", payload + "." + sig[:20], errTokenMalformed},
			{"padded signature", payload + "." + sig + "=", errTokenMalformed},
			{"signature not base64url", payload + "." + strings.Repeat("*", len(sig)), errTokenMalformed},
			{"huge payload", strings.Repeat("A", 4096) + "." + sig, errTokenMalformed},
			{"WUD's Bearer Og==", "Og==", errTokenMalformed},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, err := a.verifyToken([]byte(tc.tok)); !errors.Is(err, tc.want) {
					t.Errorf("verify = %v, want %v", err, tc.want)
				}
			})
		}
	})

	t.Run("signed but not JSON", func(t *testing.T) {
		p := base64.RawURLEncoding.EncodeToString([]byte("not json"))
		s := base64.RawURLEncoding.EncodeToString(a.sign([]byte(p)))
		if _, err := a.verifyToken([]byte(p + "." + s)); !errors.Is(err, errTokenMalformed) {
			t.Errorf("verify = %v, want malformed", err)
		}
	})
}

func TestTokensAcrossReplicas(t *testing.T) {
	shared := []byte("shared-secret-0123456789abcdef0123")
	a, _ := newTestAuth(t, ClientAuthOptions{Secret: shared})
	b, _ := newTestAuth(t, ClientAuthOptions{Secret: shared})
	tok, _ := a.issueToken("alice")
	if _, err := b.verifyToken([]byte(tok)); err != nil {
		t.Errorf("replica with the same auth.secret refuses the token: %v", err)
	}
	// Without auth.secret each process draws its own key.
	c, _ := newTestAuth(t, ClientAuthOptions{})
	d, _ := newTestAuth(t, ClientAuthOptions{})
	tok, _ = c.issueToken("alice")
	if _, err := c.verifyToken([]byte(tok)); err != nil {
		t.Errorf("random key: own token refused: %v", err)
	}
	if _, err := d.verifyToken([]byte(tok)); !errors.Is(err, errTokenSignature) {
		t.Errorf("another process's random key accepted the token: %v", err)
	}
}

func TestChallengeRealm(t *testing.T) {
	const xfp, xfh = "X-Forwarded-Proto", "X-Forwarded-Host"
	tests := []struct {
		name    string
		opts    ClientAuthOptions
		host    string
		headers []string
		want    string // scheme://host
	}{
		{"request Host", ClientAuthOptions{}, "regcache.lan:5000", nil, "http://regcache.lan:5000"},
		{"IPv6 Host", ClientAuthOptions{}, "[fd00::1]:5000", nil, "http://[fd00::1]:5000"},
		{"untrusted forwarded headers are ignored", ClientAuthOptions{}, "10.0.0.5:5000",
			[]string{xfp, "https", xfh, "evil.example"}, "http://10.0.0.5:5000"},
		{"trusted forwarded headers", ClientAuthOptions{TrustForwardedHeaders: true}, "10.0.0.5:5000",
			[]string{xfp, "https", xfh, "registry.example.com"}, "https://registry.example.com"},
		{"trusted: first of a list, any case", ClientAuthOptions{TrustForwardedHeaders: true}, "10.0.0.5:5000",
			[]string{xfp, "HTTPS, http", xfh, " front.example:8443 , inner.example"}, "https://front.example:8443"},
		{"trusted: proto alone", ClientAuthOptions{TrustForwardedHeaders: true}, "registry.example.com",
			[]string{xfp, "https"}, "https://registry.example.com"},
		{"trusted: host alone", ClientAuthOptions{TrustForwardedHeaders: true}, "10.0.0.5:5000",
			[]string{xfh, "registry.example.com"}, "http://registry.example.com"},
		{"trusted: odd values are ignored", ClientAuthOptions{TrustForwardedHeaders: true}, "10.0.0.5:5000",
			[]string{xfp, "gopher", xfh, `evil",service="x`}, "http://10.0.0.5:5000"},
		{"Host that would break the quoting", ClientAuthOptions{}, `a"b`, nil, "http://0.0.0.0:0"},
		{"public_url wins over everything", ClientAuthOptions{PublicURL: "https://regcache.example.com/", TrustForwardedHeaders: true},
			"10.0.0.5:5000", []string{xfp, "http", xfh, "other.example"}, "https://regcache.example.com"},
		{"public_url with a port", ClientAuthOptions{PublicURL: "http://10.1.2.3:8080"}, "localhost", nil, "http://10.1.2.3:8080"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAuth(t, tc.opts)
			ctx := authRequest("GET", "/v2/", tc.host, tc.headers...)
			got := string(a.challengeFor(ctx))
			want := `Bearer realm="` + tc.want + `/token",service="regcache"`
			if got != want {
				t.Errorf("challenge = %s\nwant        %s", got, want)
			}
		})
	}

	if _, err := NewClientAuth(ClientAuthOptions{PublicURL: "regcache.example.com"}); err == nil {
		t.Error("NewClientAuth accepted a public URL without scheme")
	}
}

func TestAuthorizeAuthOff(t *testing.T) {
	a, _ := newTestAuth(t, ClientAuthOptions{})
	if a.Required() {
		t.Fatal("Required() with no users and no tokens")
	}
	for _, tc := range []struct {
		path, authz string
		want        bool
	}{
		{"/v2/", "", false}, // the challenge docker login, Renovate and Watchtower look for
		{"/v2", "", false},
		{"/v2/", "Bearer Og==", true}, // WUD's lscr provider
		{"/v2/", "Bearer whatever", true},
		{"/v2/", "Basic " + base64.StdEncoding.EncodeToString([]byte("u:p")), true},
		{"/v2/library/nginx/manifests/latest", "", true},
		{"/v2/library/nginx/manifests/latest", "Bearer Og==", true},
		{"/v2/library/nginx/manifests/latest", "Garbage", true},
		{"/v2/library/nginx/tags/list", "", true},
		{"/api/v1/digest", "", true},
	} {
		ctx := authRequest("GET", tc.path, "regcache.lan")
		if tc.authz != "" {
			ctx.Request.Header.Set("Authorization", tc.authz)
		}
		if got := a.authorize(ctx, []byte(tc.path)); got != tc.want {
			t.Errorf("authorize(%s, %q) = %v, want %v", tc.path, tc.authz, got, tc.want)
			continue
		}
		if !tc.want {
			want401(t, ctx, `Bearer realm="http://regcache.lan/token",service="regcache"`)
		}
	}
	// Writes to /v2/ go on to their 405: a challenge would suggest credentials help.
	for _, method := range []string{"PUT", "POST", "DELETE"} {
		if !a.authorize(authRequest(method, "/v2/", "regcache.lan"), []byte("/v2/")) {
			t.Errorf("%s /v2/ without Authorization challenged, want it to reach the 405", method)
		}
	}
}

// want401 checks an UNAUTHORIZED registry error with the given challenge.
func want401(t *testing.T, ctx *fasthttp.RequestCtx, challenge string) {
	t.Helper()
	if ctx.Response.StatusCode() != fasthttp.StatusUnauthorized {
		t.Fatalf("status %d, want 401", ctx.Response.StatusCode())
	}
	if got := string(ctx.Response.Header.Peek("WWW-Authenticate")); got != challenge {
		t.Errorf("WWW-Authenticate = %s, want %s", got, challenge)
	}
	if !bytes.Contains(ctx.Response.Body(), []byte(`"code":"UNAUTHORIZED"`)) {
		t.Errorf("body %s is no UNAUTHORIZED registry error", ctx.Response.Body())
	}
	if string(ctx.Response.Header.Peek("Docker-Distribution-API-Version")) != "registry/2.0" {
		t.Error("no Docker-Distribution-API-Version on the 401")
	}
}

func TestAuthorizeAuthOn(t *testing.T) {
	a, now := newTestAuth(t, ClientAuthOptions{
		Users:  map[string]string{"alice": bcryptHash(t, "alice-pw")},
		Tokens: []string{"static-token-1", "static-token-2"},
		Secret: []byte("k-0123456789abcdef0123456789abcdef"),
		// Shorter than verifiedTTL: a remembered token must still expire on time.
		TokenTTL: 30 * time.Second,
	})
	if !a.Required() {
		t.Fatal("Required() = false with users and tokens")
	}
	issued, _ := a.issueToken("alice")
	other, _ := newTestAuth(t, ClientAuthOptions{})
	foreign, _ := other.issueToken("alice")

	ok := []string{
		basicHeader("alice", "alice-pw"),
		"basic " + base64.StdEncoding.EncodeToString([]byte("alice:alice-pw")), // scheme is case-insensitive
		"Bearer " + issued,
		"bearer " + issued,
		"Bearer static-token-2",
		basicHeader("ci", "static-token-1"), // docker login with a static token as password
		basicHeader("alice", "static-token-1"),
	}
	refused := []string{
		"",
		"Bearer Og==",
		"Bearer " + foreign,
		"Bearer " + issued[:len(issued)-2],
		"Bearer static-token-3",
		"Bearer",
		basicHeader("alice", "wrong"),
		basicHeader("bob", "alice-pw"),
		basicHeader("alice", ""),
		"Basic !!!not-base64",
		"Basic " + base64.StdEncoding.EncodeToString([]byte("no-colon")),
		"Digest username=alice",
		"static-token-1",
	}
	check := func(authz string, want bool) {
		t.Helper()
		for _, path := range []string{"/v2/", "/v2/library/nginx/manifests/latest", "/api/v1/digest", "/nope"} {
			// Which headers pass is the point here; rationing failures is TestFailedAuthLimited's.
			a.failures = newFailureLimiter()
			ctx := authRequest("HEAD", path, "regcache.lan")
			if authz != "" {
				ctx.Request.Header.Set("Authorization", authz)
			}
			if got := a.authorize(ctx, []byte(path)); got != want {
				t.Errorf("authorize(%s, %.20q) = %v, want %v", path, authz, got, want)
				return
			}
			if !want {
				want401(t, ctx, `Bearer realm="http://regcache.lan/token",service="regcache"`)
			}
		}
	}
	for _, h := range ok {
		check(h, true)
	}
	for _, h := range refused {
		check(h, false)
	}
	*now = now.Add(29 * time.Second)
	check("Bearer "+issued, true)
	*now = now.Add(time.Second)
	check("Bearer "+issued, false)
}

func TestBasicVerificationCache(t *testing.T) {
	a, now := newTestAuth(t, ClientAuthOptions{Users: map[string]string{"alice": bcryptHash(t, "alice-pw")}})
	h := []byte(basicHeader("alice", "alice-pw"))
	if sub, ok := a.check(h); !ok || sub != "alice" {
		t.Fatalf("check = %q, %v", sub, ok)
	}
	key := sha256.Sum256(h)
	if sub, ok := a.verified.get(key, *now); !ok || sub != "alice" {
		t.Fatal("a verified header is not remembered")
	}
	for k := range a.verified.m {
		if bytes.Contains(k[:], []byte("alice-pw")) {
			t.Fatal("the cache key holds the password")
		}
	}
	// Remembered: it passes even once the hash no longer matches (no bcrypt on a hit)...
	a.users["alice"] = []byte(bcryptHash(t, "changed"))
	if _, ok := a.check(h); !ok {
		t.Error("cached header refused within the minute")
	}
	// ...but only for a minute.
	*now = now.Add(verifiedTTL)
	if _, ok := a.check(h); ok {
		t.Error("cached header still accepted after verifiedTTL")
	}
	// Failures are never remembered.
	if _, ok := a.verified.get(sha256.Sum256([]byte(basicHeader("alice", "wrong"))), *now); ok {
		t.Error("a failure was cached")
	}

	t.Run("bounded", func(t *testing.T) {
		var c verifiedCache
		start := time.Unix(0, 0)
		for i := range verifiedMax + 100 {
			c.put(sha256.Sum256(fmt.Appendf(nil, "h%d", i)), "u", start.Add(verifiedTTL), start)
		}
		if len(c.m) > verifiedMax {
			t.Errorf("cache holds %d entries, want at most %d", len(c.m), verifiedMax)
		}
		// Expired entries make room first.
		later := start.Add(2 * verifiedTTL)
		c.put(sha256.Sum256([]byte("fresh")), "u", later.Add(verifiedTTL), later)
		if _, ok := c.get(sha256.Sum256([]byte("fresh")), later); !ok || len(c.m) > verifiedMax {
			t.Errorf("after expiry: %d entries, fresh entry kept %v", len(c.m), ok)
		}
	})
}

func TestServeToken(t *testing.T) {
	type tokenJSON struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	read := func(t *testing.T, ctx *fasthttp.RequestCtx) tokenJSON {
		t.Helper()
		if ctx.Response.StatusCode() != 200 {
			t.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
		if ct := string(ctx.Response.Header.ContentType()); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var tj tokenJSON
		if err := json.Unmarshal(ctx.Response.Body(), &tj); err != nil {
			t.Fatal(err)
		}
		if tj.Token == "" || tj.Token != tj.AccessToken {
			t.Fatalf("token %q, access_token %q: want the same token in both", tj.Token, tj.AccessToken)
		}
		return tj
	}

	t.Run("auth off: anonymous, whatever the client sends", func(t *testing.T) {
		a, _ := newTestAuth(t, ClientAuthOptions{TokenTTL: 90 * time.Second})
		for _, authz := range []string{"", basicHeader("someone", "anything"), "Bearer Og=="} {
			ctx := authRequest("GET", "/token?service=regcache&scope=repository:library/nginx:pull&account=x", "regcache.lan")
			if authz != "" {
				ctx.Request.Header.Set("Authorization", authz)
			}
			a.serveToken(ctx)
			tj := read(t, ctx)
			if tj.ExpiresIn != 90 {
				t.Errorf("expires_in = %d, want 90", tj.ExpiresIn)
			}
			if c, err := a.verifyToken([]byte(tj.Token)); err != nil || c.Sub != "anonymous" {
				t.Errorf("issued token: %+v, %v", c, err)
			}
		}
	})

	a, _ := newTestAuth(t, ClientAuthOptions{Users: map[string]string{"alice": bcryptHash(t, "alice-pw")}, Tokens: []string{"static-token"}})
	t.Run("auth on: Basic credentials get a token", func(t *testing.T) {
		for authz, sub := range map[string]string{basicHeader("alice", "alice-pw"): "alice", basicHeader("ci", "static-token"): "token"} {
			ctx := authRequest("GET", "/token?service=regcache&scope=repository:x:pull", "regcache.lan", "Authorization", authz)
			a.serveToken(ctx)
			tj := read(t, ctx)
			if tj.ExpiresIn != 300 {
				t.Errorf("expires_in = %d, want 300 (the default)", tj.ExpiresIn)
			}
			if c, err := a.verifyToken([]byte(tj.Token)); err != nil || c.Sub != sub {
				t.Errorf("issued token: %+v, %v; want sub %s", c, err, sub)
			}
		}
	})
	t.Run("auth on: anything else gets a Basic challenge", func(t *testing.T) {
		issued, _ := a.issueToken("alice")
		for _, authz := range []string{"", basicHeader("alice", "wrong"), "Bearer " + issued, "Bearer static-token"} {
			ctx := authRequest("GET", "/token", "regcache.lan")
			if authz != "" {
				ctx.Request.Header.Set("Authorization", authz)
			}
			a.serveToken(ctx)
			want401(t, ctx, `Basic realm="regcache"`)
		}
	})
	t.Run("POST is refused with 404 so OAuth2 clients fall back to GET", func(t *testing.T) {
		ctx := authRequest("POST", "/token", "regcache.lan", "Authorization", basicHeader("alice", "alice-pw"))
		a.serveToken(ctx)
		if ctx.Response.StatusCode() != 404 {
			t.Errorf("status %d, want 404", ctx.Response.StatusCode())
		}
	})
}

func TestNewClientAuthRefusesBadInput(t *testing.T) {
	for name, opts := range map[string]ClientAuthOptions{
		"plain-text password": {Users: map[string]string{"alice": "Hunter2Plain"}},
		"empty static token":  {Tokens: []string{"ok", ""}},
		"public URL ftp":      {PublicURL: "ftp://regcache.example"},
		// The shape of an issued token: the limiter forgives those, so it could be guessed.
		"static token of the issued shape": {Tokens: []string{"eyJzdWIiOiJjaSJ9.47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"}},
	} {
		_, err := NewClientAuth(opts)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "Hunter2Plain") {
			t.Errorf("%s: error echoes the password: %v", name, err)
		}
	}
}

// The per-request cost of auth on the hit path.
func BenchmarkAuthorizeIssuedToken(b *testing.B) {
	a, _ := newTestAuth(b, ClientAuthOptions{Tokens: []string{"static"}})
	tok, _ := a.issueToken("alice")
	benchAuthorize(b, a, "Bearer "+tok)
}

func BenchmarkAuthorizeStaticToken(b *testing.B) {
	a, _ := newTestAuth(b, ClientAuthOptions{Tokens: []string{"static-token-0123456789"}})
	benchAuthorize(b, a, "Bearer static-token-0123456789")
}

func BenchmarkAuthorizeBasicCached(b *testing.B) {
	a, _ := newTestAuth(b, ClientAuthOptions{Users: map[string]string{"alice": bcryptHash(b, "alice-pw")}})
	benchAuthorize(b, a, basicHeader("alice", "alice-pw"))
}

func BenchmarkAuthorizeAuthOff(b *testing.B) {
	a, _ := newTestAuth(b, ClientAuthOptions{})
	benchAuthorize(b, a, "Bearer Og==")
}

func benchAuthorize(b *testing.B, a *ClientAuth, authz string) {
	path := []byte("/v2/library/nginx/manifests/latest")
	ctx := authRequest("HEAD", string(path), "regcache.lan", "Authorization", authz)
	if !a.authorize(ctx, path) {
		b.Fatal("refused")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !a.authorize(ctx, path) {
			b.Fatal("refused")
		}
	}
}

// bcryptHashCost is bcryptHash at a chosen bcrypt cost (htpasswd -B writes cost 5).
func bcryptHashCost(t testing.TB, pw string, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// TestUnknownUserCostsWhatUsersCost: an unknown user is compared against a dummy hash of the
// cost the htpasswd file's users have, so that a wrong password and an unknown name take
// the same time (with a default-cost dummy, names of cost-5 users showed by a 20x gap).
func TestUnknownUserCostsWhatUsersCost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		costs []int
		want  int
	}{
		{"htpasswd -B", []int{5}, 5},
		{"the most common cost", []int{4, 5, 5}, 5},
		{"a tie goes to the higher cost", []int{4, 6}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			users := map[string]string{}
			for i, c := range tc.costs {
				users[fmt.Sprint("user", i)] = bcryptHashCost(t, "pw", c)
			}
			a, _ := newTestAuth(t, ClientAuthOptions{Users: users})
			if got, err := bcrypt.Cost(a.dummyHash); err != nil || got != tc.want {
				t.Fatalf("dummy hash cost %d (%v), want %d", got, err, tc.want)
			}
		})
	}

	// And coarsely by the clock: the fastest of a few unknown-user checks is within a wide
	// factor of the fastest wrong-password check.
	a, _ := newTestAuth(t, ClientAuthOptions{Users: map[string]string{"alice": bcryptHashCost(t, "alice-pw", 5)}})
	fastest := func(user string) time.Duration {
		best := time.Duration(1 << 62)
		for i := range 3 {
			start := time.Now()
			if _, ok := a.check([]byte(basicHeader(user, fmt.Sprint("wrong-", i)))); ok {
				t.Fatal("a wrong password passed")
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	known, unknown := fastest("alice"), fastest("mallory")
	if unknown > 10*known+50*time.Millisecond { // the old dummy cost 32 times a cost-5 check
		t.Errorf("unknown user takes %v, a wrong password %v: names can be told apart by timing", unknown, known)
	}
}

// TestAnonymousTokensRefusedWithAuthOn: a replica with auth off signs "anonymous" tokens for
// anyone; a replica with auth on that shares its secret must not take them as credentials.
func TestAnonymousTokensRefusedWithAuthOn(t *testing.T) {
	shared := []byte("shared-secret-0123456789abcdef0123")
	off, _ := newTestAuth(t, ClientAuthOptions{Secret: shared})
	on, _ := newTestAuth(t, ClientAuthOptions{Secret: shared, Tokens: []string{"static-token-0123456789"}})
	ctx := authRequest("GET", "/token?service=regcache", "regcache.lan")
	off.serveToken(ctx)
	var tj struct{ Token string }
	if err := json.Unmarshal(ctx.Response.Body(), &tj); err != nil || tj.Token == "" {
		t.Fatalf("auth-off /token: %s (%v)", ctx.Response.Body(), err)
	}
	const path = "/v2/library/nginx/manifests/latest"
	for range 2 { // the second time from the verification cache, if it wrongly held it
		req := authRequest("GET", path, "regcache.lan", "Authorization", "Bearer "+tj.Token)
		if on.authorize(req, []byte(path)) {
			t.Fatal("an auth-on replica accepted an anonymous token from an auth-off replica sharing its secret")
		}
		want401(t, req, `Bearer realm="http://regcache.lan/token",service="regcache"`)
	}
	// Its own tokens, for a user or a static token, still pass.
	for _, sub := range []string{"alice", "token"} {
		tok, _ := on.issueToken(sub)
		if !on.authorize(authRequest("GET", path, "regcache.lan", "Authorization", "Bearer "+tok), []byte(path)) {
			t.Errorf("own token for %s refused", sub)
		}
	}
	// So no user may be called anonymous: their tokens would be refused.
	if _, err := NewClientAuth(ClientAuthOptions{Users: map[string]string{"anonymous": bcryptHash(t, "pw")}}); err == nil ||
		!strings.Contains(err.Error(), "anonymous") {
		t.Errorf("htpasswd user anonymous: err %v, want it refused by name", err)
	}
}
