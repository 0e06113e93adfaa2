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
// This file holds ClientAuth and the check in front of the endpoints; challenge.go the
// 401's challenge, credentials.go the checks of what clients send, tokens.go the tokens
// regcache issues.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/url"
	"runtime"
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
	// TokenTTL is the lifetime of issued tokens; 0 means DefaultTokenTTL.
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

// DefaultTokenTTL is the lifetime of an issued token when none is configured
// (auth.token_ttl).
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
