package upstream

import (
	"net/http"
	"strings"
	"time"
)

// Observer is told of every HTTP exchange with an upstream (each redirect hop, token
// request and ping included), so that metrics can count what regcache costs upstream.
// It must be cheap and safe for concurrent use.
type Observer interface {
	// ObserveUpstream reports one exchange: status is 0 when no answer came.
	ObserveUpstream(upstream, method, kind string, status int, took time.Duration)
}

// requestKind names what an upstream URL is for, for Observer's kind.
func requestKind(req *http.Request) string {
	p := req.URL.Path
	switch {
	case strings.Contains(p, "/manifests/"):
		return "manifest"
	case strings.Contains(p, "/blobs/"):
		return "blob"
	case strings.HasSuffix(p, "/tags/list"):
		return "tags"
	case p == "/v2/" || p == "/v2":
		return "ping"
	case req.URL.Query().Has("scope") || req.URL.Query().Has("service"):
		return "token"
	}
	return "other"
}

func (r *Registry) observe(req *http.Request, resp *http.Response, start time.Time) {
	if r.observer == nil {
		return
	}
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	r.observer.ObserveUpstream(r.name, req.Method, requestKind(req), status, time.Since(start))
}
