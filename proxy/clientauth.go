package proxy

// Client-facing authentication: the challenge on /v2/, the /token endpoint, and the check
// every other endpoint makes when auth is on. What a client sends here is never passed
// upstream (upstream/ holds its own credentials) and never logged.
//
// With auth off (no users, no static tokens) regcache still speaks the token protocol,
// because clients insist on it: docker login, Renovate and Watchtower want a challenge on
// /v2/ and then ping again with the token, so /v2/ without Authorization answers 401 and
// with any Authorization 200, /token hands out anonymous tokens, and the other endpoints
// ignore Authorization (What's Up Docker never exchanges tokens; its lscr provider sends
// "Bearer Og==").
//
// Issued tokens are base64url(JSON {sub, exp}) "." base64url(HMAC-SHA256 over the first
// part), so replicas sharing auth.secret accept each other's tokens without shared state.

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/crypto/bcrypt"
)

// ClientAuthOptions configure a ClientAuth. The zero value is auth off.
type ClientAuthOptions struct {
	// Users maps htpasswd user names to bcrypt hashes.
	Users map[string]string
	// Tokens are static bearer tokens, also accepted as the password of Basic credentials
	// (docker login can only send a user and a password).
	Tokens []string
	// Secret is the HMAC key for issued tokens; empty draws a random one for this process.
	Secret []byte
	// TokenTTL is the lifetime of issued tokens (default 5m).
	TokenTTL time.Duration
	// PublicURL (scheme://host) fixes the challenge realm; otherwise it comes from the
	// request: Host, or X-Forwarded-Proto/-Host when TrustForwardedHeaders.
	PublicURL             string
	TrustForwardedHeaders bool
}

// ClientAuth decides whether a client may ask, and issues tokens. Safe for concurrent use.
type ClientAuth struct {
	users    map[string][]byte
	tokens   [][sha256.Size]byte // SHA-256 of each static token: equal-length constant-time compares
	required bool
	ttl      time.Duration
	macs     sync.Pool // of hash.Hash keyed with the secret
	// realm is the whole challenge when public_url fixes it; nil derives it per request.
	realm          []byte
	trustForwarded bool
	// dummyHash is compared against when the user is unknown, so that an unknown user takes
	// as long as a wrong password and names cannot be probed by timing.
	dummyHash []byte
	verified  verifiedCache
	// failures rations checks of credentials that turn out wrong (authlimit.go).
	failures *failureLimiter
	// hashes bounds the bcrypt comparisons of all clients together (hashlimit.go).
	hashes *hashSlots
	now    func() time.Time
}

// DefaultTokenTTL is the lifetime of an issued token when none is configured.
const DefaultTokenTTL = 5 * time.Minute

// NewClientAuth builds a ClientAuth; with no users and no tokens, auth is off.
func NewClientAuth(opts ClientAuthOptions) (*ClientAuth, error) {
	a := &ClientAuth{
		users:          make(map[string][]byte, len(opts.Users)),
		ttl:            opts.TokenTTL,
		trustForwarded: opts.TrustForwardedHeaders,
		failures:       newFailureLimiter(),
		hashes:         newHashSlots(runtime.GOMAXPROCS(0), hashWait),
		now:            time.Now,
	}
	if a.ttl <= 0 {
		a.ttl = DefaultTokenTTL
	}
	for user, h := range opts.Users {
		if user == anonymous {
			return nil, fmt.Errorf("client auth: user %q is reserved for the tokens of replicas with auth off; rename it in auth.htpasswd", user)
		}
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return nil, fmt.Errorf("client auth: user %q: not a bcrypt hash", user)
		}
		a.users[user] = []byte(h)
	}
	for i, t := range opts.Tokens {
		if t == "" {
			return nil, fmt.Errorf("client auth: static token %d is empty", i)
		}
		if _, _, ok := issuedShape([]byte(t)); ok {
			// A wrong token of that shape is forgiven by the limiter (see checkBearerAt), so
			// a static token of that shape could be guessed without limit.
			return nil, fmt.Errorf("auth.tokens[%d]: has the shape of a token regcache issues (payload.signature); use one without a '.', e.g. openssl rand -hex 16", i)
		}
		a.tokens = append(a.tokens, sha256.Sum256([]byte(t)))
	}
	a.required = len(a.users) > 0 || len(a.tokens) > 0
	if len(a.users) > 0 {
		// Not a secret: a hash of random bytes no one knows, at the users' cost.
		var pw [16]byte
		_, _ = rand.Read(pw[:])
		h, err := bcrypt.GenerateFromPassword(pw[:], commonCost(a.users))
		if err != nil {
			return nil, err
		}
		a.dummyHash = h
	}
	key := opts.Secret
	if len(key) == 0 {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
	}
	key = append([]byte(nil), key...)
	a.macs.New = func() any { return hmac.New(sha256.New, key) }
	if opts.PublicURL != "" {
		u, err := url.Parse(opts.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("client auth: public URL %q is not http(s)://host", opts.PublicURL)
		}
		a.realm = bearerChallenge(u.Scheme, u.Host)
	}
	return a, nil
}

// commonCost is the bcrypt cost most users' hashes have (the higher one on a tie): the dummy
// hash must cost what a wrong password costs, or an unknown name answers faster or slower
// than a known one (htpasswd -B writes cost 5, a twentieth of the default's time). Users
// of another cost remain distinguishable; one cost for all files is the common case.
func commonCost(users map[string][]byte) int {
	count := map[int]int{}
	best := bcrypt.DefaultCost
	for _, h := range users {
		c, _ := bcrypt.Cost(h) // checked by the caller
		count[c]++
		if count[c] > count[best] || count[c] == count[best] && c > best {
			best = c
		}
	}
	return best
}

// Required reports whether clients must authenticate.
func (a *ClientAuth) Required() bool { return a.required }

var (
	strWWWAuthenticate = []byte("WWW-Authenticate")
	strBasicChallenge  = []byte(`Basic realm="regcache"`)
	strXForwardedProto = []byte("X-Forwarded-Proto")
	strXForwardedHost  = []byte("X-Forwarded-Host")
)

// authorize is the check in front of every endpoint but /healthz, /readyz and /token. It
// answers 401 itself and returns false when the request may not go on.
func (a *ClientAuth) authorize(ctx *fasthttp.RequestCtx, path []byte) bool {
	h := ctx.Request.Header.Peek(fasthttp.HeaderAuthorization)
	if !a.required {
		// Only the base endpoint challenges, and only a client that sent nothing: that is
		// how clients find the token realm, and their second ping carries the token. Writes
		// go on to their 405.
		if len(h) == 0 && (string(path) == "/v2/" || string(path) == "/v2") && (ctx.IsGet() || ctx.IsHead()) {
			a.challenge(ctx)
			return false
		}
		return true
	}
	at := attempt{a: a, ctx: ctx}
	_, ok := a.checkAt(h, &at)
	if at.done(ok) {
		return false // answered 429: too many failed attempts from this client
	}
	if ok {
		return true
	}
	a.challenge(ctx)
	return false
}

// challenge answers 401 UNAUTHORIZED with the Bearer challenge that leads to /token.
func (a *ClientAuth) challenge(ctx *fasthttp.RequestCtx) {
	writeError(ctx, newError(fasthttp.StatusUnauthorized, codeUnauthorized, "authentication required"))
	ctx.Response.Header.SetBytesKV(strWWWAuthenticate, a.challengeFor(ctx))
}

// challengeFor is the WWW-Authenticate value for this request. Watchtower lowercases it
// before reading it, so the realm path is lower case.
func (a *ClientAuth) challengeFor(ctx *fasthttp.RequestCtx) []byte {
	if a.realm != nil {
		return a.realm
	}
	scheme, host := "http", ""
	if ctx.IsTLS() {
		scheme = "https"
	}
	if h := ctx.Request.Header.Host(); validRealmHost(h) {
		host = string(h)
	}
	if a.trustForwarded {
		if p := strings.ToLower(string(firstListItem(ctx.Request.Header.PeekBytes(strXForwardedProto)))); p == "http" || p == "https" {
			scheme = p
		}
		if h := firstListItem(ctx.Request.Header.PeekBytes(strXForwardedHost)); validRealmHost(h) {
			host = string(h)
		}
	}
	if host == "" {
		host = ctx.LocalAddr().String()
	}
	return bearerChallenge(scheme, host)
}

func bearerChallenge(scheme, host string) []byte {
	return []byte(`Bearer realm="` + scheme + "://" + host + `/token",service="regcache"`)
}

// firstListItem is the first element of a comma-separated header (X-Forwarded-Host: a, b
// lists the client-facing host first).
func firstListItem(v []byte) []byte {
	if i := bytes.IndexByte(v, ','); i >= 0 {
		v = v[:i]
	}
	return bytes.TrimSpace(v)
}

// validRealmHost accepts host, host:port and [v6]:port; anything else could break out of the
// quoted realm or point clients somewhere odd.
func validRealmHost(h []byte) bool {
	if len(h) == 0 || len(h) > 255 {
		return false
	}
	for _, b := range h {
		ok := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
			b == '.' || b == '-' || b == '_' || b == ':' || b == '[' || b == ']'
		if !ok {
			return false
		}
	}
	return true
}

// check validates an Authorization header: a static or issued Bearer token, or Basic
// credentials of an htpasswd user or with a static token as password. It returns the
// subject (user name, "token" for a static token).
func (a *ClientAuth) check(h []byte) (string, bool) {
	return a.checkAt(h, &attempt{a: a})
}

// checkAt is check for one request: at rations the checks it may make.
func (a *ClientAuth) checkAt(h []byte, at *attempt) (string, bool) {
	scheme, cred, _ := bytes.Cut(h, []byte(" "))
	cred = bytes.TrimSpace(cred)
	switch {
	case asciiEqualFold(scheme, "Bearer"):
		return a.checkBearerAt(h, cred, at)
	case asciiEqualFold(scheme, "Basic"):
		return a.checkBasicAt(h, cred, at)
	}
	return "", false
}

func asciiEqualFold(b []byte, s string) bool { return strings.EqualFold(string(b), s) }

func (a *ClientAuth) isStaticToken(t []byte) bool {
	if len(a.tokens) == 0 {
		return false
	}
	sum := sha256.Sum256(t)
	found := 0
	for i := range a.tokens {
		found |= subtle.ConstantTimeCompare(sum[:], a.tokens[i][:])
	}
	return found == 1
}

// checkBearerAt verifies a static or issued token for one request. A token that verified is
// remembered until it expires (at most verifiedTTL), which keeps the cache-hit path free of
// allocations and lets it pass from an address the limiter blocks; any other token is a
// guess as far as the limiter is concerned.
func (a *ClientAuth) checkBearerAt(header, cred []byte, at *attempt) (string, bool) {
	key := sha256.Sum256(header)
	now := a.now()
	if sub, ok := a.verified.get(key, now); ok {
		return sub, true
	}
	if len(cred) == 0 || !at.begin() {
		return "", false
	}
	if a.isStaticToken(cred) {
		a.verified.put(key, "token", now.Add(verifiedTTL), now)
		return "token", true
	}
	c, err := a.verifyToken(cred)
	if err == nil && c.Sub == anonymous {
		err = errTokenAnonymous
	}
	if err != nil {
		switch err {
		case errTokenExpired, errTokenAnonymous:
			at.forgive() // signed with our secret: a client's stale token, not a guess
		case errTokenSignature:
			// A token of the issued shape signed with another key: issued before a restart
			// without auth.secret, by another replica, or before the secret changed. No one
			// can guess an HMAC, and counting these would block every client behind one
			// address after a restart (static tokens never have this shape).
			at.forgive()
		}
		return "", false
	}
	expires := now.Add(verifiedTTL)
	if exp := time.Unix(c.Exp, 0); exp.Before(expires) {
		expires = exp
	}
	a.verified.put(key, c.Sub, expires, now)
	return c.Sub, true
}

// checkBasicAt verifies Basic credentials for one request. A success is remembered for
// verifiedTTL under a hash of the whole header, because bcrypt costs ~50ms and clients that
// use Basic send it on every request.
func (a *ClientAuth) checkBasicAt(header, cred []byte, at *attempt) (string, bool) {
	key := sha256.Sum256(header)
	now := a.now()
	if sub, ok := a.verified.get(key, now); ok {
		return sub, true
	}
	var buf [512]byte
	if base64.StdEncoding.DecodedLen(len(cred)) > len(buf) {
		return "", false
	}
	n, err := base64.StdEncoding.Decode(buf[:], cred)
	if err != nil {
		return "", false
	}
	user, pass, ok := bytes.Cut(buf[:n], []byte(":"))
	if !ok || !at.begin() {
		return "", false
	}
	sub := ""
	if a.isStaticToken(pass) {
		sub = "token"
	} else if h, known := a.users[string(user)]; known {
		if at.compare(h, pass) {
			sub = string(user)
		}
	} else if a.dummyHash != nil {
		_ = at.compare(a.dummyHash, pass)
	}
	if sub == "" {
		return "", false
	}
	a.verified.put(key, sub, now.Add(verifiedTTL), now)
	return sub, true
}

// anonymous is the subject of tokens issued with auth off. They grant nothing where auth is
// on, even signed with a shared secret: a replica with auth off signs them for anyone.
const anonymous = "anonymous"

// tokenClaims is what an issued token says.
type tokenClaims struct {
	Sub string `json:"sub"`
	Exp int64  `json:"exp"` // Unix seconds
}

// Why a token was refused.
var (
	errTokenMalformed = errors.New("token malformed")
	errTokenSignature = errors.New("token signature invalid")
	errTokenExpired   = errors.New("token expired")
	errTokenAnonymous = errors.New("token issued with auth off")
)

// issueToken signs a token for sub that expires after the TTL.
func (a *ClientAuth) issueToken(sub string) (string, time.Duration) {
	// Rounded up to the second: a token must not die before the expires_in its client was
	// told, or the client's last request before refreshing fails.
	exp := a.now().Add(a.ttl + time.Second - 1).Unix()
	payload, _ := json.Marshal(tokenClaims{Sub: sub, Exp: exp})
	enc := base64.RawURLEncoding
	b := make([]byte, 0, enc.EncodedLen(len(payload))+1+enc.EncodedLen(sha256.Size))
	b = enc.AppendEncode(b, payload)
	sig := a.sign(b)
	b = append(b, '.')
	b = enc.AppendEncode(b, sig)
	return string(b), a.ttl
}

func (a *ClientAuth) sign(payload []byte) []byte {
	mac := a.macs.Get().(hash.Hash)
	mac.Reset()
	mac.Write(payload)
	sum := mac.Sum(nil)
	a.macs.Put(mac)
	return sum
}

// verifyToken checks an issued token's signature, then its expiry.
func (a *ClientAuth) verifyToken(tok []byte) (tokenClaims, error) {
	var c tokenClaims
	payload, got, ok := issuedShape(tok)
	if !ok {
		return c, errTokenMalformed
	}
	enc := base64.RawURLEncoding
	if !hmac.Equal(got[:], a.sign(payload)) {
		return c, errTokenSignature
	}
	var buf [384]byte
	n, err := enc.Decode(buf[:], payload)
	if err != nil || json.Unmarshal(buf[:n], &c) != nil {
		return tokenClaims{}, errTokenMalformed
	}
	if a.now().Unix() >= c.Exp {
		return c, errTokenExpired
	}
	return c, nil
}

// issuedShape splits tok as issueToken writes it, payload "." signature, and decodes the
// signature; ok is false for anything of another shape.
func issuedShape(tok []byte) (payload []byte, sig [sha256.Size]byte, ok bool) {
	payload, enc64, found := bytes.Cut(tok, []byte("."))
	enc := base64.RawURLEncoding
	if !found || len(payload) == 0 || len(payload) > 512 || enc.DecodedLen(len(enc64)) != sha256.Size {
		return nil, sig, false
	}
	// Strict: without it, the unused low bits of the last character are ignored, and each
	// signature had four spellings that all verified.
	if n, err := enc.Strict().Decode(sig[:], enc64); err != nil || n != sha256.Size {
		return nil, sig, false
	}
	return payload, sig, true
}

// tokenResponse is the registry token answer (distribution's token spec). Clients differ in
// which field they read: Watchtower "token", Renovate either, OAuth2 clients "access_token".
type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
}

// serveToken is GET /token. Its service, scope and account parameters are accepted and
// ignored: a token grants what credentials grant, all of regcache's read-only API.
func (a *ClientAuth) serveToken(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		// 404, not 405: clients that try the OAuth2 POST first fall back to GET on 404
		// (distribution's token spec says so; containerd does it).
		writeError(ctx, newError(fasthttp.StatusNotFound, codeUnsupported, "regcache issues tokens by GET /token only"))
		return
	}
	sub := anonymous
	if a.required {
		h := ctx.Request.Header.Peek(fasthttp.HeaderAuthorization)
		scheme, cred, _ := bytes.Cut(h, []byte(" "))
		s, ok := "", false
		at := attempt{a: a, ctx: ctx}
		if asciiEqualFold(scheme, "Basic") {
			s, ok = a.checkBasicAt(h, bytes.TrimSpace(cred), &at)
		}
		if at.done(ok) {
			return // answered 429: too many failed attempts from this client
		}
		if !ok {
			writeError(ctx, newError(fasthttp.StatusUnauthorized, codeUnauthorized, "valid user name and password (or static token) needed"))
			ctx.Response.Header.SetBytesKV(strWWWAuthenticate, strBasicChallenge)
			return
		}
		sub = s
	}
	tok, ttl := a.issueToken(sub)
	body, _ := json.Marshal(tokenResponse{
		Token: tok, AccessToken: tok, ExpiresIn: int64(ttl / time.Second),
		IssuedAt: a.now().UTC().Format(time.RFC3339),
	})
	ctx.Response.Header.Set(fasthttp.HeaderCacheControl, "no-store")
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// verifiedCache remembers Authorization headers that verified, keyed by their SHA-256
// (never the header itself), until their entry expires. It is bounded: when full, expired
// entries go, and if none had, everything does (the cost is one check per client, once).
type verifiedCache struct {
	// Every request with credentials reads it, on the cache-hit path: readers share.
	mu sync.RWMutex
	m  map[[sha256.Size]byte]verifiedEntry
}

type verifiedEntry struct {
	sub     string
	expires time.Time
}

const (
	verifiedTTL = time.Minute
	verifiedMax = 4096
)

func (c *verifiedCache) get(key [sha256.Size]byte, now time.Time) (string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.m[key]
	if !ok || !now.Before(e.expires) {
		return "", false
	}
	return e.sub, true
}

func (c *verifiedCache) put(key [sha256.Size]byte, sub string, expires, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[[sha256.Size]byte]verifiedEntry{}
	}
	if len(c.m) >= verifiedMax {
		for k, e := range c.m {
			if !now.Before(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= verifiedMax {
			clear(c.m)
		}
	}
	c.m[key] = verifiedEntry{sub: sub, expires: expires}
}
