package proxy

// Issued tokens: GET /token hands them out; base64url(JSON {sub, exp}) "."
// base64url(HMAC-SHA256 of the first part), so replicas sharing auth.secret accept each
// other's tokens without shared state.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"hash"
	"time"

	"github.com/valyala/fasthttp"
)

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
		writeError(ctx, errEndpointUnknown.with("regcache issues tokens by GET /token only"))
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
			writeError(ctx, errUnauthorized.with("valid user name and password (or static token) needed"))
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
