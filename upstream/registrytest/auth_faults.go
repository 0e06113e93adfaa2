package registrytest

import (
	"net/http"
	"strconv"
)

// OnToken restricts f to the token endpoint; manifests and other endpoints pass. With
// Status(401) it is an upstream that no longer takes regcache's credentials.
func OnToken(f Fault) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		return kindOf(r.URL.Path) == "token" && f(w, r)
	}
}

// RevokeTokens forgets every token issued so far, as an upstream does when they expire:
// the next request that carries one is answered 401 with the challenge, and the client
// must go back to the token endpoint.
func (r *Registry) RevokeTokens() {
	r.mu.Lock()
	r.tokens = map[string]bool{}
	r.mu.Unlock()
}

// ClaimOnHead forwards authorized manifest HEADs to the registry but replaces the
// Content-Type and Content-Length of the answer with contentType and size (the digest
// stays true): an upstream whose HEAD headers lie about what the body is.
func (r *Registry) ClaimOnHead(contentType string, size int64) Fault {
	return func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method != http.MethodHead || kindOf(req.URL.Path) != "manifest" || !r.authorized(req) {
			return false
		}
		r.inner.ServeHTTP(claimWriter{w, contentType, size}, req)
		return true
	}
}

type claimWriter struct {
	http.ResponseWriter
	contentType string
	size        int64
}

func (c claimWriter) WriteHeader(code int) {
	if code == http.StatusOK {
		c.Header().Set("Content-Type", c.contentType)
		c.Header().Set("Content-Length", strconv.FormatInt(c.size, 10))
	}
	c.ResponseWriter.WriteHeader(code)
}
