package proxy

// The challenge: what WWW-Authenticate says on a 401, Basic or Bearer with a realm of
// regcache's own /token, in the scheme and host the client used.

import (
	"bytes"
	"strings"

	"github.com/valyala/fasthttp"
)

var (
	strWWWAuthenticate = []byte("WWW-Authenticate")
	strBasicChallenge  = []byte(`Basic realm="regcache"`)
	strXForwardedProto = []byte("X-Forwarded-Proto")
	strXForwardedHost  = []byte("X-Forwarded-Host")
)

// challenge answers 401 UNAUTHORIZED with the Bearer challenge that leads to /token.
func (a *ClientAuth) challenge(ctx *fasthttp.RequestCtx) {
	writeError(ctx, errUnauthorized.err())
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
