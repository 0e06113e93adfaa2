package proxy

// Credential checks: static and issued Bearer tokens and Basic credentials, rationed by
// the failure limiter and bcrypt's bound, with what verified remembered for a minute so
// that the cache-hit path neither hashes nor allocates.

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strings"
	"sync"
	"time"
)

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
